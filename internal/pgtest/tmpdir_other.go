//go:build unix && !linux

package pgtest

// memoryTempDir returns a tmpfs directory for the private cluster, or "";
// only Linux's /dev/shm is used.
func memoryTempDir() string { return "" }
