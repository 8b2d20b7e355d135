package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// needProgram skips a test that needs a program which is not installed,
// with the package that has it; under CI, where .ci/run installs it, its
// absence is a failure.
func needProgram(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	why := fmt.Sprintf("%s is not installed (apt-get install %s)", name, pkg)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s; CI must install it", why)
	}
	t.Skip(why)
}

// captureSample runs the tool with -w and -json (and the flags in more)
// against datagrams with chosen header fields, whole and fragmented, over
// both families, and returns the capture file's path and the -json lines,
// in the order sent.
func captureSample(t *testing.T, more ...string) (string, []map[string]any) {
	t.Helper()
	setLoopbackMTU(t, 1280)
	file := filepath.Join(t.TempDir(), "sample.pcapng")
	big := bytes.Repeat([]byte("0123456789abcdef"), 3000/16)
	sends := []struct {
		network string
		o       sendOpts
		payload []byte
	}{
		{"udp4", sendOpts{ttl: 42, tos: 0x2a, df: 1, ipOptions: []byte{1, 1, 1, 0}}, []byte("one")},
		{"udp6", sendOpts{ttl: 7, tos: 0xb9, dstOpts: true}, []byte("two\x00\xff")},
		{"udp4", sendOpts{ttl: 200, tos: 0x03, df: -1}, big}, // CE, in 3 fragments
		{"udp6", sendOpts{ttl: 9, tos: 0x01}, big},           // ECT(1), in 3 fragments
		{"udp4", sendOpts{ttl: 1, tos: 0xfd, df: -1}, []byte{}},
	}
	p := startRun(t, append([]string{"-port", "0", "-json", "-w", file, "-count", strconv.Itoa(len(sends))}, more...)...)
	port := p.port(t)
	var lines []map[string]any
	for _, s := range sends {
		c := sender(t, s.network, s.o)
		send(t, c, loopback(s.network, port), s.payload)
		// One at a time, so that lines and packets keep the order sent.
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		if m["payload"] != hex.EncodeToString(s.payload) {
			t.Fatalf("line %v, want payload %q", m, s.payload)
		}
		lines = append(lines, m)
	}
	code, _, stderr := p.wait(t)
	if rest := checkSummary(t, stderr, len(sends)); code != exitOK || len(rest) != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	return file, lines
}

// readSample runs captureSample and reads the capture back with the
// test's own reader: every packet on lo, raw IP.
func readSample(t *testing.T, more ...string) (*capture, []map[string]any) {
	t.Helper()
	file, lines := captureSample(t, more...)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	c, err := readCapture(b)
	if err != nil {
		t.Fatalf("reading the capture back: %v", err)
	}
	if len(c.ifaces) != 1 || c.ifaces[0].name != "lo" || c.ifaces[0].linkType != 101 {
		t.Errorf("interfaces %+v, want lo alone, raw IP", c.ifaces)
	}
	return c, lines
}

// TestRunCapture checks -w with the test's own reader: one packet per
// line, on the interface the line names, at the time it gives, holding
// the whole IP datagram whose payload the line shows.
func TestRunCapture(t *testing.T) {
	if !inNetns(t) {
		return
	}
	c, lines := readSample(t)
	if len(c.packets) != len(lines) {
		t.Fatalf("%d packets, %d lines", len(c.packets), len(lines))
	}
	for i, m := range lines {
		pk := c.packets[i]
		ts, _ := time.Parse(time.RFC3339Nano, m["time"].(string))
		payload, _ := hex.DecodeString(m["payload"].(string))
		if !pk.time.Equal(ts) || int(pk.data[0]>>4) != int(m["family"].(float64)) || !bytes.HasSuffix(pk.data, payload) {
			t.Errorf("packet %d at %v, version %d, %d bytes; line %v", i, pk.time, pk.data[0]>>4, len(pk.data), m)
		}
		// The IP length field covers exactly the datagram, reassembled.
		n := 0
		if pk.data[0]>>4 == 4 {
			n = int(pk.data[2])<<8 | int(pk.data[3])
		} else {
			n = 40 + (int(pk.data[4])<<8 | int(pk.data[5]))
		}
		if n != len(pk.data) {
			t.Errorf("packet %d: IP length %d, %d bytes written", i, n, len(pk.data))
		}
	}
}

// TestRunCaptureFragments checks -w -w-fragments with the test's own
// reader: a datagram that was not fragmented is one packet, as without
// the flag; a fragmented one is as many packets as its line says
// fragments, each a fragment on the line's interface, in the order
// received, the last at the line's time, whose data put together is the
// datagram the line shows.
func TestRunCaptureFragments(t *testing.T) {
	if !inNetns(t) {
		return
	}
	c, lines := readSample(t, "-w-fragments")
	pk := c.packets
	fragmented := 0
	for i, m := range lines {
		n := int(m["fragments"].(float64))
		if len(pk) < n {
			t.Fatalf("line %d of %d fragments: %d packets left", i, n, len(pk))
		}
		frags := pk[:n]
		pk = pk[n:]
		ts, _ := time.Parse(time.RFC3339Nano, m["time"].(string))
		payload, _ := hex.DecodeString(m["payload"].(string))
		if !frags[n-1].time.Equal(ts) {
			t.Errorf("line %d: last packet at %v, the line at %v", i, frags[n-1].time, ts)
		}
		if n == 1 {
			if !bytes.HasSuffix(frags[0].data, payload) {
				t.Errorf("line %d: packet of %d bytes, without the line's payload", i, len(frags[0].data))
			}
			continue
		}
		fragmented++
		// Put the datagram together from the fragments' data, by offset.
		var udp []byte
		seen := map[int]bool{}
		for j, f := range frags {
			if j > 0 && f.time.Before(frags[j-1].time) {
				t.Errorf("line %d: fragment %d at %v, before %v", i, j, f.time, frags[j-1].time)
			}
			off, more, data, ok := ipFragment(f.data)
			if !ok || int(f.data[0]>>4) != int(m["family"].(float64)) || seen[off] {
				t.Fatalf("line %d: packet %d is no new fragment of an IPv%v datagram: % x", i, j, m["family"], f.data[:min(len(f.data), 48)])
			}
			seen[off] = true
			if end := off + len(data); end > len(udp) {
				udp = append(udp, make([]byte, end-len(udp))...)
			}
			copy(udp[off:], data)
			if !more && off+len(data) != len(udp) {
				t.Errorf("line %d: the last fragment ends at %d, data reaches %d", i, off+len(data), len(udp))
			}
		}
		if len(udp) != int(m["udp_len"].(float64)) || !bytes.Equal(udp[8:], payload) {
			t.Errorf("line %d: the fragments hold %d bytes of UDP, the line %v with its payload", i, len(udp), m["udp_len"])
		}
	}
	if len(pk) != 0 || fragmented == 0 {
		t.Errorf("%d packets after the last line; %d lines fragmented", len(pk), fragmented)
	}
}

// ipFragment returns the offset, the more-fragments flag and the data of
// an IPv4 fragment, or of an IPv6 one whose Fragment header follows the
// fixed header.
func ipFragment(b []byte) (off int, more bool, data []byte, ok bool) {
	switch {
	case len(b) >= 20 && b[0]>>4 == 4:
		fo := int(b[6])<<8 | int(b[7])
		ihl := int(b[0]&15) * 4
		return fo & 0x1fff * 8, fo&0x2000 != 0, b[ihl:], fo&0x3fff != 0
	case len(b) >= 48 && b[0]>>4 == 6 && b[6] == 44:
		fo := int(b[42])<<8 | int(b[43])
		return fo &^ 7, fo&1 != 0, b[48:], true
	}
	return 0, false, nil, false
}

// tsharkFields are the fields asked of tshark, by the -json key each must
// agree with; for a field of the other family tshark prints nothing.
var tsharkFields = []struct{ json, v4, v6 string }{
	{"time", "frame.time_epoch", "frame.time_epoch"},
	{"ifname", "frame.interface_name", "frame.interface_name"},
	{"src", "ip.src", "ipv6.src"},
	{"dst", "ip.dst", "ipv6.dst"},
	{"sport", "udp.srcport", "udp.srcport"},
	{"dport", "udp.dstport", "udp.dstport"},
	{"ttl", "ip.ttl", "ipv6.hlim"},
	{"hlim", "", "ipv6.hlim"},
	{"tos", "ip.dsfield", "ipv6.tclass"},
	{"dscp", "ip.dsfield.dscp", "ipv6.tclass.dscp"},
	{"ecn", "ip.dsfield.ecn", "ipv6.tclass.ecn"},
	{"id", "ip.id", "ipv6.fraghdr.ident"},
	{"df", "ip.flags.df", ""},
	{"flow", "", "ipv6.flow"},
	{"ip_options", "ip.opt.type", ""},
	{"ext_headers", "", "ipv6.nxt"},
	{"udp_len", "udp.length", "udp.length"},
	{"udp_checksum", "udp.checksum", "udp.checksum"},
	{"payload", "udp.payload", "udp.payload"},
}

// TestCaptureTshark reads the -w file with tshark, which must decode each
// field of the -json line to the same value. Fields that are not in the
// packet (ifindex, fragments) are not compared.
func TestCaptureTshark(t *testing.T) {
	needProgram(t, "tshark", "tshark")
	if !inNetns(t) {
		return
	}
	file, lines := captureSample(t)
	checkTshark(t, file, lines, false)
}

// TestCaptureFragmentsTshark reads the -w -w-fragments file with tshark,
// which must reassemble each datagram from the fragments written, in the
// packet of its last one, and decode each field of the -json line to the
// same value there, the count of fragments included.
func TestCaptureFragmentsTshark(t *testing.T) {
	needProgram(t, "tshark", "tshark")
	if !inNetns(t) {
		return
	}
	file, lines := captureSample(t, "-w-fragments")
	checkTshark(t, file, lines, true)
}

// tsharkFragmentFields are the fields that show how tshark put a datagram
// together: in each fragment's packet the number of the packet it was
// reassembled in, and there the count of fragments.
var tsharkFragmentFields = []string{"ip.reassembled_in", "ipv6.reassembled.in", "ip.fragment.count", "ipv6.fragment.count"}

// checkTshark decodes file with tshark and compares each packet with its
// -json line. With fragments, a fragmented datagram is the packets of its
// fragments, compared on the last, which tshark reassembles it in.
func checkTshark(t *testing.T, file string, lines []map[string]any, fragments bool) {
	t.Helper()
	args := []string{"-r", file, "-n", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"}
	var names []string
	if fragments {
		// Two passes: in one, a fragment does not yet know where it is
		// reassembled.
		args = append(args, "-2")
		names = append(names, tsharkFragmentFields...)
	}
	for _, f := range tsharkFields {
		for _, n := range []string{f.v4, f.v6} {
			if n != "" && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	for _, n := range names {
		args = append(args, "-e", n)
	}
	cmd := exec.Command("tshark", args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no user profile
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %q: %v\n%s", args, err, out)
	}
	rows := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	packets := len(lines)
	if fragments {
		packets = 0
		for _, m := range lines {
			packets += int(m["fragments"].(float64))
		}
	}
	if len(rows) != packets {
		t.Fatalf("tshark decoded %d packets, the tool printed %d lines of %d packets:\n%s", len(rows), len(lines), packets, out)
	}
	row := 0
	for i, m := range lines {
		value := map[string]string{}
		n := 1
		if fragments {
			n = int(m["fragments"].(float64))
		}
		last := row + n // tshark numbers packets from 1
		for ; row < last; row++ {
			cols := strings.Split(rows[row], "\t")
			value = map[string]string{}
			for j, name := range names {
				if j < len(cols) {
					value[name] = cols[j]
				}
			}
			if n == 1 || row == last-1 {
				continue
			}
			if in := value["ip.reassembled_in"] + value["ipv6.reassembled.in"]; in != strconv.Itoa(last) {
				t.Errorf("packet %d, a fragment of line %d: tshark reassembled it in packet %q, want %d", row+1, i, in, last)
			}
		}
		if n > 1 {
			if c := value["ip.fragment.count"] + value["ipv6.fragment.count"]; c != strconv.Itoa(n) {
				t.Errorf("packet %d, the last fragment of line %d: tshark counts %q fragments, -json %d", last, i, c, n)
			}
		}
		for _, f := range tsharkFields {
			name := f.v4
			if m["family"] == 6.0 {
				name = f.v6
			}
			if name == "" {
				continue
			}
			got, want := value[name], tsharkValue(t, f.json, m)
			if !sameValue(got, want) {
				t.Errorf("packet %d (IPv%v): tshark %s = %q, -json %s gives %q", i, m["family"], name, got, f.json, want)
			}
		}
	}
}

// tsharkValue is the -json line's field as tshark spells it.
func tsharkValue(t *testing.T, key string, m map[string]any) string {
	t.Helper()
	if key == "id" && m["family"] == 6.0 && !slices.Contains(m["ext_headers"].([]any), any(44.0)) {
		return "" // no Fragment header, nothing for tshark to show
	}
	switch v := m[key].(type) {
	case float64:
		return strconv.FormatUint(uint64(v), 10)
	case bool:
		if v {
			return "1"
		}
		return "0"
	}
	switch key {
	case "time":
		ts, _ := time.Parse(time.RFC3339Nano, m[key].(string))
		return fmt.Sprintf("%d.%09d", ts.Unix(), ts.Nanosecond())
	case "ecn":
		for i, n := range ecnNames {
			if n == m[key] {
				return strconv.Itoa(i)
			}
		}
	case "ip_options":
		// The options the tests send are one byte each: their types.
		b, _ := hex.DecodeString(m[key].(string))
		var types []string
		for _, x := range b {
			types = append(types, strconv.Itoa(int(x)))
		}
		return strings.Join(types, ",")
	case "ext_headers":
		// tshark's ipv6.nxt is the fixed header's Next Header: the first
		// extension header, or UDP.
		ext := m[key].([]any)
		if len(ext) == 0 {
			return "17"
		}
		return strconv.Itoa(int(ext[0].(float64)))
	}
	return fmt.Sprint(m[key])
}

// sameValue compares a tshark field with the -json value: numbers in any
// base tshark chose, booleans as 1 or True, addresses by value.
func sameValue(got, want string) bool {
	if got == want {
		return true
	}
	if g, err := strconv.ParseUint(got, 0, 64); err == nil {
		w, err := strconv.ParseUint(want, 0, 64)
		return err == nil && g == w
	}
	switch got {
	case "True":
		return want == "1"
	case "False":
		return want == "0"
	}
	if g, err := netip.ParseAddr(got); err == nil {
		w, err := netip.ParseAddr(want)
		return err == nil && g == w
	}
	return false
}

// TestToolCaptureStdout runs the binary with -w -: stdout carries the
// capture alone, each packet as soon as it arrived (as "| tshark -r -"
// needs), and stderr the port and the summary.
func TestToolCaptureStdout(t *testing.T) {
	bin := tool(t)
	if !inNetns(t) {
		return
	}
	cmd := exec.Command(bin, "-port", "0", "-w", "-", "-count", "2")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	var wg sync.WaitGroup
	p := &proc{stderr: lines(errPipe, &wg)}
	port := p.port(t)

	var mu sync.Mutex
	var got []byte
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		for {
			n, err := stdout.Read(buf)
			mu.Lock()
			got = append(got, buf[:n]...)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	// packets returns the packets read so far, once they parse.
	packets := func() int {
		mu.Lock()
		defer mu.Unlock()
		c, err := readCapture(got)
		if err != nil {
			return -1
		}
		return len(c.packets)
	}
	s := sender(t, "udp6", sendOpts{})
	for i, payload := range []string{"first", "second"} {
		send(t, s, loopback("udp6", port), []byte(payload))
		deadline := time.Now().Add(waitTime)
		for packets() != i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("packet %d not on stdout within %v", i+1, waitTime)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	<-readDone
	wg.Wait()
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit: %v", err)
	}
	var stderr []string
	for l := range p.stderr {
		stderr = append(stderr, l)
	}
	if rest := checkSummary(t, stderr, 2); len(rest) != 0 {
		t.Errorf("more stderr %q", rest)
	}
	c, err := readCapture(got)
	if err != nil {
		t.Fatal(err)
	}
	for i, payload := range []string{"first", "second"} {
		if d := c.packets[i].data; d[0]>>4 != 6 || !bytes.HasSuffix(d, []byte(payload)) {
			t.Errorf("packet %d: % x, want IPv6 with %q", i, d, payload)
		}
	}
}
