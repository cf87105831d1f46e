// Package minrelay is the ceiling the proxy benchmarks measure egressd
// against: the least a CONNECT proxy can do (read the head, dial, answer
// 200, io.Copy both ways, which splices between two *net.TCPConn). It
// checks nothing and is never part of egressd.
package minrelay

import (
	"bytes"
	"io"
	"net"
	"strings"
)

// ServeConnect serves CONNECT tunnels on ln until ln is closed.
func ServeConnect(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			var head []byte
			buf := make([]byte, 512)
			for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
				n, err := c.Read(buf)
				if err != nil {
					c.Close()
					return
				}
				head = append(head, buf[:n]...)
			}
			f := strings.Fields(string(head))
			if len(f) < 2 {
				c.Close()
				return
			}
			up, err := net.Dial("tcp", f[1])
			if err != nil {
				c.Close()
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			Join(c.(*net.TCPConn), up.(*net.TCPConn))
		}()
	}
}

// Join copies a to b and b to a until each end of stream, half-closing
// the other side after each, then closes both.
func Join(a, b *net.TCPConn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(b, a)
		_ = b.CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(a, b)
	_ = a.CloseWrite()
	<-done
	a.Close()
	b.Close()
}
