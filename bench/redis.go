package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// redisConn is the few Redis commands the benchmark sends (PING, LLEN,
// ZCARD, INFO) over RESP, so the module needs no Redis client.
type redisConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRedis(ctx context.Context, addr string) (*redisConn, error) {
	c, err := new(net.Dialer).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &redisConn{c: c, r: bufio.NewReader(c)}, nil
}

func (r *redisConn) close() { _ = r.c.Close() }

// do sends one command and returns its reply: an int64, a string, nil, or
// an error reply as error.
func (r *redisConn) do(args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_ = r.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.c.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	line, err := r.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("redis: empty reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}

func (r *redisConn) int(args ...string) (int64, error) {
	v, err := r.do(args...)
	if err != nil {
		return 0, err
	}
	n, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("redis %s: not an integer: %v", args[0], v)
	}
	return n, nil
}

// bullBacklog is the number of a BullMQ queue's jobs that are not finished:
// waiting, prioritized, delayed, paused and active.
func (r *redisConn) bullBacklog(queue string) (int, error) {
	total := 0
	for _, k := range []struct{ cmd, key string }{
		{"LLEN", "wait"}, {"LLEN", "active"}, {"LLEN", "paused"}, {"ZCARD", "prioritized"}, {"ZCARD", "delayed"},
	} {
		n, err := r.int(k.cmd, "bull:"+queue+":"+k.key)
		if err != nil {
			return 0, err
		}
		total += int(n)
	}
	return total, nil
}
