package falclient

import (
	"fmt"
	"strconv"
	"strings"
)

// KeysFromEnv returns the fal keys configured in the environment, read
// through getenv (os.Getenv in production): FAL_KEYS, comma-separated, then
// FAL_AI_KEY_1 ... FAL_AI_KEY_5. Keys are trimmed, empty entries dropped and
// repeats removed, keeping the first occurrence's position.
func KeysFromEnv(getenv func(string) string) []string {
	var keys []string
	seen := make(map[string]bool)
	add := func(k string) {
		k = strings.TrimSpace(k)
		if k == "" || seen[k] {
			return
		}
		seen[k] = true
		keys = append(keys, k)
	}
	for _, k := range strings.Split(getenv("FAL_KEYS"), ",") {
		add(k)
	}
	for i := 1; i <= 5; i++ {
		add(getenv("FAL_AI_KEY_" + strconv.Itoa(i)))
	}
	return keys
}

// DefaultMaxInFlight is the capacity of a key when FAL_KEY_MAX_IN_FLIGHT is
// not set.
const DefaultMaxInFlight = 2

// maxCapacity bounds a key's capacity, to catch typos.
const maxCapacity = 1000

// ParseMaxInFlight reads FAL_KEY_MAX_IN_FLIGHT for nkeys keys and returns
// one capacity per key, in FAL_KEYS order, for Config.Capacity. s is one
// number for every key ("4") or a comma-separated list with one number per
// key ("10,4,4"); fal keys contain a colon, so the list names keys by
// position only. An empty s gives every key DefaultMaxInFlight. Every
// number must be 1-1000.
func ParseMaxInFlight(s string, nkeys int) ([]int, error) {
	if nkeys < 1 {
		return nil, fmt.Errorf("FAL_KEY_MAX_IN_FLIGHT: no fal keys to apply it to")
	}
	s = strings.TrimSpace(s)
	if s == "" {
		s = strconv.Itoa(DefaultMaxInFlight)
	}
	parts := strings.Split(s, ",")
	if len(parts) != 1 && len(parts) != nkeys {
		return nil, fmt.Errorf("FAL_KEY_MAX_IN_FLIGHT has %d values for %d fal keys: give one number for every key or one per key", len(parts), nkeys)
	}
	caps := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > maxCapacity {
			// The value is not echoed: a key pasted into the wrong
			// variable must not reach a log.
			return nil, fmt.Errorf("FAL_KEY_MAX_IN_FLIGHT value %d is not a number from 1 to %d", i+1, maxCapacity)
		}
		caps[i] = n
	}
	for len(caps) < nkeys {
		caps = append(caps, caps[0])
	}
	return caps, nil
}
