package execapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// Request is one execution, as a client sends it (POST /v1/execute). Every
// field but Cmd is optional; what a field leaves out comes from the
// server's policy files and base profile. The names follow the execution
// APIs of the field (isol8's /execute); each policy setting a field makes
// is decoded and checked exactly like the launcher flag for the same key
// and reported with the source "request:FIELD".
type Request struct {
	// Cmd is the program: a name looked up in the sandbox's PATH, or a
	// path. Required.
	Cmd string `json:"cmd"`
	// Args are its arguments.
	Args []string `json:"args,omitempty"`
	// Stdin is fed to the command; empty means none.
	Stdin string `json:"stdin,omitempty"`
	// Profile is the built-in profile to build on; "" means the server's
	// (--profile), else the policy files', else standard.
	Profile string `json:"profile,omitempty"`
	// Network adds to the network policy.
	Network *NetworkRequest `json:"network,omitempty"`
	// Env sets variables in the sandbox (env.set).
	Env map[string]string `json:"env,omitempty"`
	// Secrets are set in the sandbox's environment and masked in every
	// field of the response (and, where a network.credentials entry names
	// one, kept with egressd: the sandbox gets a placeholder).
	Secrets map[string]string `json:"secrets,omitempty"`
	// Timeout bounds the command (process.timeout: "30s", "5m"); "" means
	// the policy's, capped at the server's --max-timeout.
	Timeout string `json:"timeout,omitempty"`
	// Limits are the command's resource limits.
	Limits *Limits `json:"limits,omitempty"`
}

// NetworkRequest is the network part of a Request.
type NetworkRequest struct {
	// Mode is network.mode: none, filtered or host (the floor decides
	// what is allowed).
	Mode string `json:"mode,omitempty"`
	// Allow and Block add rules (network.allow, network.block); a block
	// rule wins over every allow.
	Allow []string `json:"allow,omitempty"`
	Block []string `json:"block,omitempty"`
}

// Limits are a Request's resource limits; a nil field leaves the policy's.
type Limits struct {
	// Memory is process.memory ("512m", "2GiB"; "0": none).
	Memory *string `json:"memory,omitempty"`
	// CPUs is process.cpus (1.5; 0: none).
	CPUs *float64 `json:"cpus,omitempty"`
	// PidsLimit is process.pids_limit (0: none).
	PidsLimit *int64 `json:"pids_limit,omitempty"`
}

// requestError is a request the server refuses: its HTTP status and the
// message, which says what was wrong and how to fix it.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// decodeRequest reads one JSON object from body: at most max bytes (413
// past it), no field the Request does not have (400 naming it), nothing
// after the object.
func decodeRequest(body io.Reader, max int64) (*Request, error) {
	data, err := io.ReadAll(io.LimitReader(body, max+1))
	if err != nil {
		return nil, badRequest("reading the request: %v", err)
	}
	if int64(len(data)) > max {
		return nil, &requestError{status: http.StatusRequestEntityTooLarge,
			msg: fmt.Sprintf("the request is larger than the server's limit of %d bytes (--max-request-bytes)", max)}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		return nil, jsonError(err)
	}
	if dec.More() {
		return nil, badRequest("the request has data after its JSON object: send one object")
	}
	if r.Cmd == "" {
		return nil, badRequest(`the request has no "cmd": name the program to run, e.g. {"cmd": "python3", "args": ["-c", "print(1)"]}`)
	}
	if strings.IndexByte(r.Cmd, 0) >= 0 || slices.ContainsFunc(r.Args, func(a string) bool { return strings.IndexByte(a, 0) >= 0 }) {
		return nil, badRequest(`"cmd" and "args" may not hold a NUL byte`)
	}
	for _, name := range sortedKeys(r.Secrets) {
		if !policy.ValidEnvName(name) {
			return nil, badRequest("secrets: %s is not a variable name (letters, digits and _, not starting with a digit)", strconv.Quote(name))
		}
		if r.Secrets[name] == "" {
			return nil, badRequest("secrets: %s is empty (an empty value cannot be masked)", name)
		}
		if strings.IndexByte(r.Secrets[name], 0) >= 0 {
			return nil, badRequest("secrets: %s holds a NUL byte (an environment value cannot)", name)
		}
	}
	// env's names are checked as the launcher's --env checks NAME=value;
	// a name holding "=" would be read as a shorter name and a value that
	// starts with the rest, so it is refused here.
	for _, name := range sortedKeys(r.Env) {
		if !policy.ValidEnvName(name) {
			return nil, badRequest("env: %s is not a variable name (letters, digits and _, not starting with a digit)", strconv.Quote(name))
		}
	}
	return &r, nil
}

// jsonError turns a decoding error into the message a client can act on.
func jsonError(err error) error {
	msg := err.Error()
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case strings.HasPrefix(msg, "json: unknown field "):
		return badRequest("unknown field %s in the request (see docs/serve.md for the fields)", strings.TrimPrefix(msg, "json: unknown field "))
	case errors.As(err, &syn):
		return badRequest("the request is not valid JSON: %s at byte %d", syn.Error(), syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the request"
		}
		return badRequest("%s: want a JSON %s, got %s", field, jsonKind(typ.Type.Kind().String()), typ.Value)
	case errors.Is(err, io.EOF):
		return badRequest("the request is empty: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("the request ends in the middle of its JSON object")
	}
	return badRequest("the request is not valid JSON: %s", strings.TrimPrefix(msg, "json: "))
}

func jsonKind(goKind string) string {
	switch goKind {
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	case "float64", "int64", "int":
		return "number"
	}
	return goKind
}

// settings are the policy settings the request makes, in a fixed order,
// each with its field as the source (request:network.allow).
func (r *Request) settings() []policy.Setting {
	var out []policy.Setting
	add := func(key, field string, vals ...string) {
		out = append(out, policy.Setting{Key: key, Values: vals, Source: policy.Request(field)})
	}
	if n := r.Network; n != nil {
		if n.Mode != "" {
			add("network.mode", "network.mode", n.Mode)
		}
		for _, a := range n.Allow {
			add("network.allow", "network.allow", a)
		}
		for _, b := range n.Block {
			add("network.block", "network.block", b)
		}
	}
	for _, name := range sortedKeys(r.Env) {
		add("env.set", "env", name+"="+r.Env[name])
	}
	if r.Timeout != "" {
		add("process.timeout", "timeout", r.Timeout)
	}
	if l := r.Limits; l != nil {
		if l.Memory != nil {
			add("process.memory", "limits.memory", *l.Memory)
		}
		if l.CPUs != nil {
			add("process.cpus", "limits.cpus", strconv.FormatFloat(*l.CPUs, 'g', -1, 64))
		}
		if l.PidsLimit != nil {
			add("process.pids_limit", "limits.pids_limit", strconv.FormatInt(*l.PidsLimit, 10))
		}
	}
	return out
}

// secrets are the request's secrets, by name.
func (r *Request) secrets() []sandbox.Secret {
	var out []sandbox.Secret
	for _, name := range sortedKeys(r.Secrets) {
		out = append(out, sandbox.Secret{Name: name, Value: r.Secrets[name]})
	}
	return out
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
