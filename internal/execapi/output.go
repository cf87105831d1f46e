package execapi

import (
	"bytes"
	"sync"
	"unicode/utf8"

	"github.com/egressd/egressd/sandbox"
)

// cappedBuffer keeps the first max bytes written to it and drops the rest,
// noting that it did; a write never fails, so the command is never blocked
// or broken by the cap.
type cappedBuffer struct {
	mu        sync.Mutex
	max       int64
	buf       bytes.Buffer
	truncated bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.max - int64(c.buf.Len())
	if int64(len(p)) > room {
		c.truncated = true
		if room > 0 {
			c.buf.Write(p[:room])
		}
		return len(p), nil
	}
	c.buf.Write(p)
	return len(p), nil
}

func (c *cappedBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// secretMasker returns the function that masks secrets in the texts of a
// response that do not come from the command's streams (which are masked
// as they stream): denied targets, error messages, warnings. Those carry
// what egressd has transformed (a name lower-cased, escaped, cut), so
// every form sandbox.LineMasker knows is masked.
func secretMasker(secrets []string) func(string) string {
	return sandbox.NewLineMasker(secrets).String
}

// utf8Tail is the length of an incomplete UTF-8 sequence at the end of p
// (0 when p ends on a whole rune, or with bytes no rune completes): the
// stream holds it back for the next chunk, so a character split across
// writes is not broken into two replacement characters.
func utf8Tail(p []byte) int {
	for n := 1; n <= utf8.UTFMax-1 && n <= len(p); n++ {
		b := p[len(p)-n]
		if b < 0x80 {
			return 0
		}
		if utf8.RuneStart(b) {
			if !utf8.FullRune(p[len(p)-n:]) {
				return n
			}
			return 0
		}
	}
	return 0
}
