//go:build linux

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a re-executed bench process playing a role. It talks in JSON
// lines on standard output; its standard input, when closed or written a
// line, tells it to finish.
type child struct {
	role   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan []byte
	exited chan error
	stderr tailBuffer
}

// startChild starts this program again in role, with args. Its standard
// error is kept (the tail of it) for error messages, and passed through to
// passthrough when that is not nil.
func startChild(role string, passthrough io.Writer, args ...string) (*child, error) {
	c := &child{role: role, lines: make(chan []byte, 16), exited: make(chan error, 1)}
	c.cmd = exec.Command("/proc/self/exe", args...)
	// Under the race detector a process sleeps a second at exit unless
	// told not to; the bench starts dozens.
	c.cmd.Env = roleEnv(role, "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	// A child outlives nothing: if the orchestrator dies, so does it.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if passthrough != nil {
		c.cmd.Stderr = io.MultiWriter(&c.stderr, passthrough)
	} else {
		c.cmd.Stderr = &c.stderr
	}
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	c.stdin = stdin
	pr, pw := io.Pipe()
	c.cmd.Stdout = pw
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- bytes.Clone(sc.Bytes())
		}
		close(c.lines)
		_, _ = io.Copy(io.Discard, pr)
	}()
	if err := c.cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("starting %s: %w", role, err)
	}
	go func() {
		err := c.cmd.Wait()
		pw.Close()
		c.exited <- err
	}()
	return c, nil
}

// How long a child has to say it is ready, and to exit once told to.
const (
	childReadyTimeout  = 10 * time.Second
	childFinishTimeout = 5 * time.Second
)

// startReady starts a child, as startChild does, and waits until it says
// it is ready; one that does not is finished before the error returns.
func startReady(role string, passthrough io.Writer, args ...string) (*child, error) {
	c, err := startChild(role, passthrough, args...)
	if err != nil {
		return nil, err
	}
	if err := c.ready(childReadyTimeout); err != nil {
		_ = c.finish(childFinishTimeout)
		return nil, err
	}
	return c, nil
}

// finishInto finishes the child and, when *err is nil, sets it to what
// finishing returned: for a deferred call.
func (c *child) finishInto(err *error) {
	if ferr := c.finish(childFinishTimeout); *err == nil {
		*err = ferr
	}
}

// next decodes the child's next line of output into v, waiting at most
// timeout.
func (c *child) next(timeout time.Duration, v any) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case line, ok := <-c.lines:
		if !ok {
			return fmt.Errorf("%s ended without a result%s", c.role, c.stderr.note())
		}
		if err := json.Unmarshal(line, v); err != nil {
			return fmt.Errorf("%s said %q: %w%s", c.role, line, err, c.stderr.note())
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%s said nothing for %v%s", c.role, timeout, c.stderr.note())
	}
}

// ready waits for the child's {"ready":true}.
func (c *child) ready(timeout time.Duration) error {
	var r struct {
		Ready bool `json:"ready"`
	}
	if err := c.next(timeout, &r); err != nil {
		return err
	}
	if !r.Ready {
		return fmt.Errorf("%s did not say it was ready%s", c.role, c.stderr.note())
	}
	return nil
}

// say writes a line to the child's standard input.
func (c *child) say(line string) error {
	_, err := io.WriteString(c.stdin, line+"\n")
	return err
}

// finish closes the child's standard input and waits for it to exit,
// killing it (this child, by its process) after timeout.
func (c *child) finish(timeout time.Duration) error {
	c.stdin.Close()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-c.exited:
		if err != nil {
			return fmt.Errorf("%s: %w%s", c.role, err, c.stderr.note())
		}
		return nil
	case <-t.C:
		_ = c.cmd.Process.Signal(os.Kill)
		<-c.exited
		return fmt.Errorf("%s did not exit within %v of being told to; killed", c.role, timeout)
	}
}

// tailBuffer keeps the last tailMax bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 4 << 10

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > tailMax {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-tailMax:]...)
	}
	return len(p), nil
}

// note returns the tail as a suffix for an error message.
func (b *tailBuffer) note() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(string(b.buf))
	if s == "" {
		return ""
	}
	return ": " + s
}
