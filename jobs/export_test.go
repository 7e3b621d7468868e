package jobs

import (
	"errors"
	"sync"

	"github.com/aiqueue/aiqueue/internal/groupcommit"
	"github.com/aiqueue/aiqueue/internal/plans"
)

// Probed reports whether j carries the lineProbe its submission read.
func Probed(j *Job) bool { return j.probe != nil }

// GroupSubmits makes s commit every user's submissions in one lane, one group at a time, holding
// the first until release is called, and records the size of each group it
// commits (one-submission groups included: a refused group is committed
// again one at a time). waiting is how many submissions wait for a group.
func GroupSubmits(s *Service) (release func(), sizes func() []int, waiting func() int) {
	var mu sync.Mutex
	var recorded []int
	hold := make(chan struct{})
	OneLane(s)
	lane := s.lanes[0]
	commit := lane.Commit
	lane.Commit = func(group []*Submission) error {
		mu.Lock()
		first := len(recorded) == 0
		recorded = append(recorded, len(group))
		mu.Unlock()
		if first {
			<-hold
		}
		return commit(group)
	}
	return func() { close(hold) }, func() []int {
			mu.Lock()
			defer mu.Unlock()
			return append([]int(nil), recorded...)
		}, func() int {
			return lane.Waiting()
		}
}

// Deadlocks counts the groups of submissions of s that Postgres ended to
// break a deadlock.
func Deadlocks(s *Service) func() int {
	var mu sync.Mutex
	n := 0
	seen := map[*groupcommit.Committer[*Submission]]bool{}
	for _, lane := range s.lanes {
		if seen[lane] {
			continue
		}
		seen[lane] = true
		alone := lane.Alone
		lane.Alone = func(err error) bool {
			if errors.Is(err, errDeadlock) {
				mu.Lock()
				n++
				mu.Unlock()
			}
			return alone(err)
		}
	}
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// OneLane makes s commit every user's submissions in one lane, as several
// processes' lanes would meet on the same accounts.
func OneLane(s *Service) {
	for i := range s.lanes {
		s.lanes[i] = s.lanes[0]
	}
}

// GenericPlans makes s run the admission statement on its generic plan
// from the first submission, as it does once the tables have grown.
func GenericPlans(s *Service) { s.plans = plans.Switched() }
