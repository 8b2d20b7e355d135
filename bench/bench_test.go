//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
)

// TestMain lets the test binary play the bench's roles: the bench
// re-executes /proc/self/exe, which under go test is this binary.
func TestMain(m *testing.M) {
	if os.Getenv(envRole) != "" {
		os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// benchReport runs the bench with args and a JSON output file, and returns
// the report it wrote, and its standard output. An exit status in cannot means the bench cannot run
// here: the test is skipped, except under CI, where that fails it.
func benchReport(t *testing.T, what string, cannot []int, args ...string) (report, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	code := dispatch(append(args, "-json-out", out), &stdout, &stderr)
	t.Logf("stdout:\n%s", stdout.String())
	if slices.Contains(cannot, code) {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s cannot run in CI:\n%s", what, stderr.String())
		}
		t.Skipf("%s cannot run here:\n%s", what, stderr.String())
	}
	if code != 0 {
		t.Fatalf("bench %s exited %d; stderr:\n%s", strings.Join(args, " "), code, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("the JSON output does not decode: %v", err)
	}
	return rep, stdout.String()
}

// TestQuickRun runs the -quick smoke end to end, in a namespace of its
// own, and checks the JSON it writes: well-formed, every receiver in every
// run, both ping-pong servers, and the targets judged.
func TestQuickRun(t *testing.T) {
	rep, stdout := benchReport(t, "the bench", []int{exitNoNamespace}, "-quick")
	if !rep.Meta.Quick || rep.Meta.Count != quickCount || rep.Meta.Rounds != quickRounds {
		t.Errorf("meta = %+v, want a quick run of %d datagrams and %d round", rep.Meta, quickCount, quickRounds)
	}
	if !slices.Equal(rep.Meta.Receivers, receiverNames) {
		t.Errorf("receivers %v, want %v", rep.Meta.Receivers, receiverNames)
	}

	// 64 and 1,400 bytes, both families, quiet and under the flood.
	if len(rep.Runs) != 8 {
		t.Fatalf("%d runs, want 8", len(rep.Runs))
	}
	for _, r := range rep.Runs {
		if len(r.Measurements) != len(receiverNames) || len(r.Summary) != len(receiverNames) {
			t.Errorf("run %s: %d measurements and %d summaries, want %d of each",
				r.Name, len(r.Measurements), len(r.Summary), len(receiverNames))
		}
		for _, name := range receiverNames {
			s := r.summaryOf(name)
			if s == nil {
				t.Errorf("run %s: no summary for %s", r.Name, name)
				continue
			}
			if s.Rounds != 1 || s.Sent != quickCount || len(s.Errors) > 0 {
				t.Errorf("run %s, %s: rounds %d, sent %d, errors %q", r.Name, name, s.Rounds, s.Sent, s.Errors)
			}
			// Quiet, every receiver gets some of the traffic; under the
			// flood the naive one may be swamped.
			if !r.Flood && s.Delivered == 0 {
				t.Errorf("run %s, %s: delivered nothing", r.Name, name)
			}
			if !strings.Contains(stdout, name) {
				t.Errorf("the table does not name %s", name)
			}
		}
		base := r.summaryOf(recvUDPConn)
		if base != nil && base.Delivered > 0 && math.Abs(float64(base.RecvCPURatio)-1) > 1e-9 {
			t.Errorf("run %s: the baseline's ratio to itself is %v", r.Name, base.RecvCPURatio)
		}
		// Every receiver is set against every floor, and a floor that
		// delivered against itself at 1.
		for _, s := range r.Summary {
			if len(s.FloorRatios) != len(floors) {
				t.Errorf("run %s, %s: ratios to %d floors, want %d", r.Name, s.Receiver, len(s.FloorRatios), len(floors))
			}
			if slices.Contains(floors, s.Receiver) && s.Delivered > 0 && math.Abs(float64(s.FloorRatios[s.Receiver])-1) > 1e-9 {
				t.Errorf("run %s: floor %s's ratio to itself is %v", r.Name, s.Receiver, s.FloorRatios[s.Receiver])
			}
		}
	}

	if len(rep.PingPong) != 2 {
		t.Fatalf("%d ping-pong families, want 2", len(rep.PingPong))
	}
	for _, p := range rep.PingPong {
		for _, server := range pingServers {
			s := p.summaryOf(server)
			if s == nil || s.Rounds != 1 || !s.P50NS.ok() || !s.P99NS.ok() || !s.ServerCPU.ok() || !s.ServerSwitches.ok() || len(s.Errors) > 0 {
				t.Errorf("ping-pong IPv%d, %s: %+v", p.Family, server, s)
			}
		}
	}

	// Every target is judged in every run it applies to: per run the CPU
	// ratios to net.UDPConn, gopacket-afpacket and ring+chan-floor, then
	// the flood ratio (flood runs) or the machine CPU and loss (quiet
	// runs); per family p50 and p99 against net.UDPConn and
	// net.UDPConn+chan.
	if want := 8*3 + 4 + 4*2 + 2*4; len(rep.Targets) != want {
		t.Errorf("%d target lines, want %d", len(rep.Targets), want)
	}
	for _, tl := range rep.Targets {
		if tl.Pass && !tl.Value.ok() {
			t.Errorf("target %q in %s passes without a value", tl.Target, tl.Run)
		}
	}
}

// TestParseUDP checks the packet receivers' parser on a datagram of each
// family and on what it must refuse.
func TestParseUDP(t *testing.T) {
	v4 := []byte{
		0x45, 0, 0, 31, 0, 1, 0x40, 0, 64, 17, 0, 0, // DF, TTL 64, UDP
		127, 0, 0, 1, 127, 0, 0, 2,
		0x30, 0x39, 0x9c, 0x40, 0, 11, 0, 0, // 12345 -> 40000, length 11
		1, 2, 3,
	}
	v6 := append([]byte{
		0x60, 0, 0, 0, 0, 10, 17, 7, // payload length 10, UDP, hop limit 7
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
	}, 0x30, 0x39, 0x9c, 0x40, 0, 10, 0, 0, 9, 8)

	src, dst, ttl, payload, ok := parseUDP(v4, 40000)
	if !ok || src != netip.MustParseAddrPort("127.0.0.1:12345") || dst != netip.MustParseAddr("127.0.0.2") ||
		ttl != 64 || !bytes.Equal(payload, []byte{1, 2, 3}) {
		t.Errorf("IPv4: %v %v %d %v %v", src, dst, ttl, payload, ok)
	}
	src, dst, ttl, payload, ok = parseUDP(v6, 40000)
	if !ok || src != netip.MustParseAddrPort("[::1]:12345") || dst != netip.IPv6Loopback() ||
		ttl != 7 || !bytes.Equal(payload, []byte{9, 8}) {
		t.Errorf("IPv6: %v %v %d %v %v", src, dst, ttl, payload, ok)
	}

	refuse := map[string][]byte{
		"other port":     v4,
		"empty":          nil,
		"truncated":      v4[:24],
		"TCP":            append(append([]byte(nil), v4[:9]...), append([]byte{6}, v4[10:]...)...),
		"fragment":       append(append([]byte(nil), v4[:6]...), append([]byte{0x20, 0}, v4[8:]...)...),
		"UDP length big": append(append([]byte(nil), v4[:24]...), append([]byte{0, 99}, v4[26:]...)...),
		"version 5":      append([]byte{0x55}, v4[1:]...),
	}
	for name, b := range refuse {
		port := uint16(40000)
		if name == "other port" {
			port = 40001
		}
		if _, _, _, _, ok := parseUDP(b, port); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestUDPPortFilter checks that the hand-built BPF programs (gopacket's
// and the floors') assemble and that their jumps stay inside them and end
// at a return.
func TestUDPPortFilter(t *testing.T) {
	progs := map[string]func() ([]bpf.RawInstruction, error){
		"gopacket":   func() ([]bpf.RawInstruction, error) { return udpPortFilter(40000) },
		"floor IPv4": func() ([]bpf.RawInstruction, error) { return floorFilter(4, 40000) },
		"floor IPv6": func() ([]bpf.RawInstruction, error) { return floorFilter(6, 40000) },
	}
	for name, build := range progs {
		prog, err := build()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		const jmp, ret, ja = 0x05, 0x06, 0x00
		for i, ins := range prog {
			if ins.Op&0x07 != jmp {
				continue
			}
			skips := []uint32{uint32(ins.Jt), uint32(ins.Jf)}
			if ins.Op&0xf0 == ja {
				skips = []uint32{ins.K}
			}
			for _, skip := range skips {
				if to := i + 1 + int(skip); to >= len(prog) {
					t.Errorf("%s: instruction %d jumps to %d, past the end", name, i, to)
				}
			}
		}
		if last := prog[len(prog)-1]; last.Op&0x07 != ret || last.K != 0 {
			t.Errorf("%s: the program does not end by dropping: %+v", name, last)
		}
	}
}

// TestRotate checks the receiver order of each round.
func TestRotate(t *testing.T) {
	s := []string{"a", "b", "c"}
	for round, want := range [][]string{{"a", "b", "c"}, {"b", "c", "a"}, {"c", "a", "b"}, {"a", "b", "c"}} {
		if got := rotate(s, round); !slices.Equal(got, want) {
			t.Errorf("round %d: %v, want %v", round, got, want)
		}
	}
}
