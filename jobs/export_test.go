package jobs

// Probed reports whether j carries the lineProbe its submission read.
func Probed(j *Job) bool { return j.probe != nil }
