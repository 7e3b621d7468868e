package dispatch

import "testing"

// TestPrefetch: a round reads every candidate it could take while one user
// waits, and about each user's share (plus the spread) when many do.
func TestPrefetch(t *testing.T) {
	for _, c := range []struct{ n, users, want int }{
		{n: 30, users: 0, want: 30},   // no walk yet
		{n: 30, users: 1, want: 30},   // one user may take every slot
		{n: 100, users: 1, want: 32},  // at most perUserPrefetch
		{n: 30, users: 100, want: 3},  // a share of 1, plus the spread
		{n: 128, users: 10, want: 15}, // 13 + 2
		{n: 1, users: 50, want: 1},    // never more than n
	} {
		if got := prefetch(c.n, c.users); got != c.want {
			t.Errorf("prefetch(%d, %d) = %d, want %d", c.n, c.users, got, c.want)
		}
	}
}
