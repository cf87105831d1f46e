package pid1

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// A pooled sandbox's container is made and started before its tenant is
// known, with the init waiting (WaitArgs): it starts no command until it
// reads one Request from RequestFD, a pipe the launcher holds the other
// end of. Everything of the execution that would otherwise be in the
// container's config.json (the command, its environment, secrets
// included, and its working directory) comes this way, so it never
// touches a disk and never reaches the init's own environment
// (/proc/1/environ).

// RequestFD is the file descriptor a waiting init reads its request from
// (the runtime passes it with --preserve-fds 1).
const RequestFD = 3

// MaxRequest bounds an encoded request's body: more than the kernel lets
// a command's arguments and environment be (execve's E2BIG comes far
// below it).
const MaxRequest = 4 << 20

// waitFlag is the init's argument for waiting mode.
const waitFlag = "-wait"

// WaitArgs is the init's command line in waiting mode.
func WaitArgs() []string { return []string{Path, waitFlag} }

// Request is the one execution a waiting init runs.
type Request struct {
	// Args is the command and its arguments (Args[0] is looked up in the
	// environment's PATH, as without waiting).
	Args []string `json:"args"`
	// Env is the command's whole environment ("NAME=value").
	Env []string `json:"env"`
	// Cwd is its working directory inside the container.
	Cwd string `json:"cwd"`
}

// Check reports what makes r unrunnable: no command, a NUL byte in any
// string, an environment entry without a name, a working directory that
// is not an absolute clean path.
func (r Request) Check() error {
	if len(r.Args) == 0 || r.Args[0] == "" {
		return errors.New("no command")
	}
	for _, a := range r.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("an argument holds a NUL byte")
		}
	}
	for _, e := range r.Env {
		name, _, ok := strings.Cut(e, "=")
		if !ok || name == "" || strings.IndexByte(e, 0) >= 0 {
			return errors.New("an environment entry is not NAME=value without NUL")
		}
	}
	if r.Cwd == "" || !filepath.IsAbs(r.Cwd) || filepath.Clean(r.Cwd) != r.Cwd || strings.IndexByte(r.Cwd, 0) >= 0 {
		return errors.New("the working directory is not an absolute clean path")
	}
	return nil
}

// Encode is r as a waiting init reads it: the body's length (4 bytes,
// big-endian), then the body, r as JSON.
func (r Request) Encode() ([]byte, error) {
	if err := r.Check(); err != nil {
		return nil, fmt.Errorf("execution request: %w", err)
	}
	body, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("execution request: %w", err)
	}
	if len(body) > MaxRequest {
		return nil, fmt.Errorf("execution request: %d bytes, more than the %d a command's arguments and environment may be", len(body), MaxRequest)
	}
	out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(body)), uint32(len(body)))
	return append(out, body...), nil
}

// ReadRequest reads one request from rd (Encode's form), reading no byte
// past it: an end of input before it is whole, a length above MaxRequest,
// a body that is not one JSON request object of known fields, or a
// request Check refuses, is an error.
func ReadRequest(rd io.Reader) (Request, error) {
	var r Request
	var hdr [4]byte
	if _, err := io.ReadFull(rd, hdr[:]); err != nil {
		return r, fmt.Errorf("reading its length: %w", eofIsUnexpected(err))
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxRequest {
		return r, fmt.Errorf("%d bytes announced, more than the %d allowed", n, MaxRequest)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rd, body); err != nil {
		return r, fmt.Errorf("reading its %d bytes: %w", n, eofIsUnexpected(err))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Request{}, fmt.Errorf("decoding it: %w", err)
	}
	if dec.More() {
		return Request{}, errors.New("decoding it: more than one JSON value")
	}
	if err := r.Check(); err != nil {
		return Request{}, err
	}
	return r, nil
}

func eofIsUnexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Command is the command of the init's command line args (Args's form):
// what follows "--".
func Command(args []string) ([]string, bool) {
	if len(args) == 0 || args[0] != Path {
		return nil, false
	}
	for i, a := range args[1:] {
		if a == "--" {
			return args[i+2:], len(args) > i+2
		}
	}
	return nil, false
}
