package falclient

import (
	"math/rand/v2"
	"net/http"
	"time"
)

// KeyState is a snapshot of one key's health, for metrics, logs and tests.
// It never contains the key's secret.
type KeyState struct {
	// Index is the 1-based key index.
	Index int
	// Name is "key-<Index>".
	Name string
	// Healthy is true when the key is neither cooling down nor revoked.
	Healthy bool
	// CoolingUntil is when the key's 429 cool-down ends; zero or in the past
	// when it is not cooling down.
	CoolingUntil time.Time
	// Revoked is true while the key is taken out after a 401/403.
	Revoked bool
	// RevokedUntil is when a revoked key will be tried again.
	RevokedUntil time.Time
	// RateLimitStreak is the number of 429s since the key's last success; it
	// drives the exponential cool-down.
	RateLimitStreak int
}

// keyHealth is the in-memory health of one key; guarded by Client.mu.
type keyHealth struct {
	coolingUntil time.Time
	revokedUntil time.Time
	streak       int
}

// wait returns how long until the key is usable, 0 if it is usable now.
func (h *keyHealth) wait(now time.Time) time.Duration {
	until := h.coolingUntil
	if h.revokedUntil.After(until) {
		until = h.revokedUntil
	}
	if d := until.Sub(now); d > 0 {
		return d
	}
	return 0
}

// KeyHealth returns a snapshot of every key's health, in key order.
func (c *Client) KeyHealth() []KeyState {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]KeyState, len(c.health))
	for i, h := range c.health {
		cooling := h.coolingUntil.After(now)
		revoked := h.revokedUntil.After(now)
		out[i] = KeyState{
			Index:           i + 1,
			Name:            c.KeyName(i + 1),
			Healthy:         !cooling && !revoked,
			CoolingUntil:    h.coolingUntil,
			Revoked:         revoked,
			RevokedUntil:    h.revokedUntil,
			RateLimitStreak: h.streak,
		}
	}
	return out
}

// recordOutcome updates the key's health after a call that got an HTTP
// answer. It returns the key's cool-down for a 429 (0 otherwise).
//
//   - 429: the key cools down for CooldownBase * 2^(streak-1), capped at
//     CooldownMax, with equal jitter (between half and all of it), or for
//     retryAfter if fal sent a longer one. The streak grows only when the key
//     was not already cooling down, so a burst of 429s from calls that were
//     already in flight counts once.
//   - 401/403: the key is revoked for RevokeFor, then tried again.
//   - anything else that fal answered (2xx, and 4xx that are about the request
//     rather than the key): the key is healthy again and its streak resets.
//
// Network errors, timeouts and 5xx say nothing about the key and are not
// recorded.
func (c *Client) recordOutcome(key, status int, retryAfter time.Duration) time.Duration {
	if key < 1 || key > len(c.keys) {
		return 0
	}
	now := c.now()
	name := c.KeyName(key)

	c.mu.Lock()
	h := &c.health[key-1]
	switch {
	case status == http.StatusTooManyRequests:
		if !h.coolingUntil.After(now) {
			h.streak++
		}
		d := c.cooldown(h.streak)
		if retryAfter > d {
			d = retryAfter
		}
		if until := now.Add(d); until.After(h.coolingUntil) {
			h.coolingUntil = until
		}
		wait := h.coolingUntil.Sub(now)
		streak := h.streak
		c.mu.Unlock()
		c.log.Warn("fal key rate limited, cooling down", "key", name, "cooldown", wait.Round(time.Millisecond).String(), "streak", streak)
		return wait
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		h.revokedUntil = now.Add(c.revokeFor)
		c.mu.Unlock()
		c.log.Warn("fal key rejected, taken out", "key", name, "status", status, "revoked_for", c.revokeFor.String())
		return 0
	case status >= 500 || status == 0:
		c.mu.Unlock()
		return 0
	default:
		wasUnhealthy := h.wait(now) > 0 || h.streak > 0
		*h = keyHealth{}
		c.mu.Unlock()
		if wasUnhealthy {
			c.log.Info("fal key healthy again", "key", name)
		}
		return 0
	}
}

// cooldown returns the jittered exponential cool-down for the n-th 429 in a
// row (n >= 1).
func (c *Client) cooldown(n int) time.Duration {
	d := c.coolBase
	for i := 1; i < n && d < c.coolMax; i++ {
		d *= 2
	}
	d = min(d, c.coolMax)
	half := d / 2
	return half + rand.N(d-half+1)
}
