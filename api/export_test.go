package api

import "time"

// SetWatcherRecheck replaces the delays after which w wakes the
// subscribers of a newly watched job again (none: never). Call it before
// the first Subscribe.
func SetWatcherRecheck(w *Watcher, delays ...time.Duration) { w.recheck = delays }
