package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udpstream/udpstream"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the one line on stderr
	}{
		{[]string{"-4", "-6"}, "-4 and -6 exclude each other"},
		{[]string{"-count", "-1"}, "-count -1: want a positive number"},
		{[]string{"-B", "64"}, "-B 64: want 128 to 1048576 KiB"},
		{[]string{"-port", "65536"}, "-port 65536: want 0 to 65535"},
		{[]string{"-port", "-1"}, "-port -1: want 0 to 65535"},
		{[]string{"-port", "http"}, `invalid value "http" for flag -port`},
		{[]string{"-bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"-port", "53", "extra"}, `unexpected argument "extra"`},
		{[]string{"-i", ""}, "-i needs an interface name"},
		{[]string{"-demo", "-port", "53"}, "-demo takes only -json and -stats, not -port"},
		{[]string{"-demo", "-count", "1", "-echo"}, "-demo takes only -json and -stats, not -count"},
		{[]string{"-monitor"}, "-monitor needs -port N"},
		{[]string{"-monitor", "-port", "0"}, "-monitor needs -port N"},
		{[]string{"-monitor", "-port", "53", "-echo"}, "-monitor and -echo exclude each other"},
		{[]string{"-mode", "kernel", "-monitor", "-port", "53"}, "-mode kernel needs the port's socket, which -monitor leaves to its owner"},
		{[]string{"-mode", "raw"}, `-mode "raw": want ring, kernel or socket`},
		{[]string{"-mode", "socket", "-w", "x.pcapng"}, "-w writes whole IP datagrams, which -mode socket does not receive"},
		{[]string{"-mode", "socket", "-port-errors"}, "-monitor and -port-errors need packet sockets"},
		{[]string{"-demo", "-monitor"}, "-demo takes only -json and -stats, not -monitor"},
		{[]string{"-w", "-", "-json"}, "-w - writes the capture to stdout, where -json would print"},
		{[]string{"-w", "-", "-port-errors"}, "give -w a file name"},
		{[]string{"-w", ""}, "-w needs a file name, or - for stdout"},
		{[]string{"-w-fragments"}, "-w-fragments says how -w writes fragmented datagrams: give -w FILE too"},
		{[]string{"-json", "-w-fragments"}, "give -w FILE too"},
		{[]string{"-top", "-w-fragments"}, "give -w FILE too"},
		{[]string{"-mode", "socket", "-w", "x.pcapng", "-w-fragments"}, "which -mode socket does not receive"},
		{[]string{"-demo", "-w", "x.pcapng"}, "-demo takes only -json and -stats, not -w"},
		{[]string{"-top", "-json"}, "-top draws the terminal instead of printing lines"},
		{[]string{"-top", "-w", "x.pcapng"}, "it takes neither -json nor -w"},
		{[]string{"-join", "192.0.2.1"}, `"192.0.2.1" is not a multicast group`},
		{[]string{"-join", "group"}, `"group" is not a multicast group`},
		{[]string{"-join", "ff02::fb%eth0"}, "give the interface with -i"},
		{[]string{"-6", "-join", "224.0.0.251"}, "-6 and an IPv4 -join group exclude each other"},
		{[]string{"-join", "ff02::fb", "-4"}, "-4 and an IPv6 -join group exclude each other"},
		{[]string{"-demo", "-join", "224.0.0.251"}, "-demo takes only -json and -stats, not -join"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit status %d, want %d", code, exitUsage)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "udpstream: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("stderr %q, want one line starting %q containing %q", msg, "udpstream: ", tc.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != exitOK {
		t.Errorf("exit status %d, want 0", code)
	}
	for _, flag := range []string{"-port", "-i", "-4", "-6", "-json", "-count", "-port-errors", "-echo", "-stats", "-demo", "-monitor", "-w", "-w-fragments", "-top", "-mode"} {
		if !strings.Contains(stderr.String(), "  "+flag) {
			t.Errorf("help does not list %s:\n%s", flag, stderr.String())
		}
	}
}

func TestStreamOptions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		n    int
	}{
		// The ring size is always one; without -mode, the mode is
		// chosen (ModeAuto), except for a capture, which needs the ring.
		{nil, 2},
		{[]string{"-4"}, 3},
		{[]string{"-6", "-i", "eth0", "-port-errors"}, 5},
		{[]string{"-json", "-count", "3", "-stats", "-echo"}, 2},
		{[]string{"-monitor", "-port", "53"}, 3},
		{[]string{"-B", "2048"}, 2},
		{[]string{"-mode", "ring"}, 1},
		{[]string{"-mode", "socket", "-4"}, 3},
		{[]string{"-w", "x.pcapng"}, 1},
		{[]string{"-w", "x.pcapng", "-w-fragments"}, 2},
	} {
		o, err := parseArgs(tc.args, nil)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if got := len(o.streamOptions()); got != tc.n {
			t.Errorf("%q: %d options, want %d", tc.args, got, tc.n)
		}
	}
}

func TestMessage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("udpstream: packet sockets need CAP_NET_RAW: run as root"), "udpstream: packet sockets need CAP_NET_RAW: run as root"},
		{errors.New("writing output: broken pipe"), "udpstream: writing output: broken pipe"},
	} {
		if got := message(tc.err); got != tc.want {
			t.Errorf("message(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// jsonKeys is the -json contract: every key, in the order printed, with
// its JSON type. Those that a mode may not see may be null (see nullable).
var jsonKeys = []struct{ name, typ string }{
	{"time", "string"},
	{"ifindex", "number"},
	{"ifname", "string"},
	{"family", "number"},
	{"src", "string"},
	{"sport", "number"},
	{"dst", "string"},
	{"dport", "number"},
	{"ttl", "number"},
	{"tos", "number"},
	{"id", "number"},
	{"df", "bool"},
	{"flow", "number"},
	{"ip_options", "string"},
	{"ext_headers", "array"},
	{"fragments", "number"},
	{"udp_len", "number"},
	{"udp_checksum", "number"},
	{"len", "number"},
	{"payload", "string"},
	{"dscp", "number"},
	{"ecn", "string"},
	{"hlim", "number"},  // null for IPv4
	{"error", "string"}, // error lines only
}

// nullable are the keys that are null where the mode cannot see the field
// (socket mode); checkDatagram says when they must be.
var nullable = []string{"id", "df", "ext_headers", "fragments", "udp_checksum"}

// ecnNames are the RFC 3168 names of the ECN codepoints, by value.
var ecnNames = []string{"Not-ECT", "ECT(1)", "ECT(0)", "CE"}

// checkSchema checks one -json line against the contract and returns it
// decoded: numbers as float64, arrays as []any.
func checkSchema(t *testing.T, line string, isError bool) map[string]any {
	t.Helper()
	// The keys in order, from the token stream.
	dec := json.NewDecoder(strings.NewReader(line))
	var keys []string
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("line %q is not a JSON object", line)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
	}
	var want []string
	for _, k := range jsonKeys {
		if k.name != "error" || isError {
			want = append(want, k.name)
		}
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys %q\nwant %q", keys, want)
	}

	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range jsonKeys {
		v, ok := m[k.name]
		if !ok {
			continue
		}
		var typ string
		switch v := v.(type) {
		case string:
			typ = "string"
		case float64:
			typ = "number"
			if v < 0 || v != math.Trunc(v) {
				t.Errorf("%s: %v is not a whole number", k.name, v)
			}
		case bool:
			typ = "bool"
		case []any:
			typ = "array"
			for _, x := range v {
				if f, ok := x.(float64); !ok || f < 0 || f > 255 || f != math.Trunc(f) {
					t.Errorf("%s: element %v is not a header number", k.name, x)
				}
			}
		case nil:
			typ = "null"
			if k.name == "hlim" && m["family"] == 4.0 || slices.Contains(nullable, k.name) {
				typ = k.typ // IPv4 has no hop limit; a mode may not see the field
			}
		}
		if typ != k.typ {
			t.Errorf("%s: %s %v, want a %s", k.name, typ, v, k.typ)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil {
		t.Errorf("time: %v", err)
	}
	for _, k := range []string{"ip_options", "payload"} {
		if _, err := hex.DecodeString(m[k].(string)); err != nil {
			t.Errorf("%s: not hex: %v", k, err)
		}
	}
	for _, k := range []string{"src", "dst"} {
		if a, err := netip.ParseAddr(m[k].(string)); err != nil || a.Is4In6() {
			t.Errorf("%s: %q is not a plain address: %v", k, m[k], err)
		}
	}
	// The later fields agree with the ones they are derived from.
	if tos, ok := m["tos"].(float64); ok {
		if m["dscp"] != float64(uint8(tos)>>2) {
			t.Errorf("dscp %v, but tos %v", m["dscp"], tos)
		}
		if m["ecn"] != ecnNames[uint8(tos)&3] {
			t.Errorf("ecn %v, but tos %v", m["ecn"], tos)
		}
	}
	if m["family"] == 6.0 && m["hlim"] != m["ttl"] {
		t.Errorf("IPv6 hlim %v, ttl %v: want the same", m["hlim"], m["ttl"])
	}
	if isError && m["error"] == "" {
		t.Errorf("error line with an empty error")
	}
	return m
}

// wantDatagram is what a -json line must say about a datagram a test sent.
type wantDatagram struct {
	src, dst   netip.AddrPort
	ttl, tos   int
	df         *bool // nil: either
	ipOptions  string
	extHeaders []int // nil: do not check
	fragments  int
	payload    []byte
	ifname     string
	ifindex    int
	socket     bool // socket mode: what a socket cannot see must be null
}

// checkDatagram checks a decoded -json line field by field.
func checkDatagram(t *testing.T, m map[string]any, w wantDatagram) {
	t.Helper()
	family := 4.0
	if w.src.Addr().Is6() {
		family = 6
	}
	check := func(key string, want any) {
		t.Helper()
		if got := m[key]; !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %#v, want %#v", key, got, want)
		}
	}
	check("family", family)
	check("src", w.src.Addr().String())
	check("sport", float64(w.src.Port()))
	check("dst", w.dst.Addr().String())
	check("dport", float64(w.dst.Port()))
	check("ttl", float64(w.ttl))
	check("tos", float64(w.tos))
	if w.df != nil {
		check("df", *w.df)
	}
	check("ip_options", w.ipOptions)
	if w.extHeaders != nil {
		ext := []any{}
		for _, x := range w.extHeaders {
			ext = append(ext, float64(x))
		}
		check("ext_headers", ext)
	}
	if w.fragments != 0 {
		check("fragments", float64(w.fragments))
	} else {
		check("fragments", nil)
	}
	// Null exactly where the mode cannot see the field.
	// (An unfragmented IPv6 datagram's id is 0: it has no fragment ID.)
	unseen := []string{"udp_checksum"}
	if family == 4 || w.fragments != 1 {
		unseen = append(unseen, "id")
	}
	if family == 4 {
		unseen = append(unseen, "df")
	}
	for _, k := range unseen {
		if v, ok := m[k]; !ok || (v == nil) != w.socket {
			t.Errorf("%s: %#v in %s mode", k, v, map[bool]string{false: "ring", true: "socket"}[w.socket])
		}
	}
	check("len", float64(len(w.payload)))
	check("udp_len", float64(len(w.payload)+8))
	check("payload", hex.EncodeToString(w.payload))
	check("ifname", w.ifname)
	check("ifindex", float64(w.ifindex))
	if family == 4 {
		check("flow", 0.0)
	} else {
		check("df", false)
	}
	ts, _ := time.Parse(time.RFC3339Nano, m["time"].(string))
	if d := time.Since(ts); d < -time.Minute || d > time.Minute {
		t.Errorf("time %v is not about now", ts)
	}
}

// testHeader is a typical received IPv4 header for the formatting tests.
func testHeader() udpstream.Header {
	return udpstream.Header{
		Version:     4,
		Src:         netip.MustParseAddrPort("192.0.2.1:5353"),
		Dst:         netip.MustParseAddrPort("198.51.100.7:9001"),
		TTL:         64,
		TOS:         0xb9,
		ID:          0x1234,
		DF:          true,
		Fragments:   1,
		UDPLength:   8 + 5,
		UDPChecksum: 0xbeef,
		IfIndex:     7,
		Time:        time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC),
	}
}

func TestRecord(t *testing.T) {
	h4 := testHeader()
	h4.Options = []byte{0x94, 0x04, 0x00, 0x00} // Router Alert
	h6 := testHeader()
	h6.Version = 6
	h6.Src = netip.MustParseAddrPort("[2001:db8::1]:5353")
	h6.Dst = netip.MustParseAddrPort("[2001:db8::2]:9001")
	h6.DF, h6.FlowLabel, h6.ID, h6.Fragments = false, 0xabcde, 0x01020304, 3
	h6.ExtHeaders = []uint8{0, 60, 44}

	for _, tc := range []struct {
		name string
		p    udpstream.Packet[[]byte]
		want string
	}{
		{"ipv4", udpstream.Packet[[]byte]{Value: []byte("hello"), Header: h4},
			`{"time":"2024-05-06T07:08:09.123456789Z","ifindex":7,"ifname":"eth0","family":4,` +
				`"src":"192.0.2.1","sport":5353,"dst":"198.51.100.7","dport":9001,"ttl":64,"tos":185,` +
				`"id":4660,"df":true,"flow":0,"ip_options":"94040000","ext_headers":[],"fragments":1,` +
				`"udp_len":13,"udp_checksum":48879,"len":5,"payload":"68656c6c6f","dscp":46,"ecn":"ECT(1)","hlim":null}`},
		{"ipv6", udpstream.Packet[[]byte]{Value: []byte{0, 0xff}, Header: h6},
			`{"time":"2024-05-06T07:08:09.123456789Z","ifindex":7,"ifname":"eth0","family":6,` +
				`"src":"2001:db8::1","sport":5353,"dst":"2001:db8::2","dport":9001,"ttl":64,"tos":185,` +
				`"id":16909060,"df":false,"flow":703710,"ip_options":"","ext_headers":[0,60,44],"fragments":3,` +
				`"udp_len":13,"udp_checksum":48879,"len":2,"payload":"00ff","dscp":46,"ecn":"ECT(1)","hlim":64}`},
		// The library hands over no payload with a datagram to another
		// port: len comes from the UDP header.
		{"port error", udpstream.Packet[[]byte]{Header: testHeader(), Err: udpstream.ErrNotDestPort},
			`{"time":"2024-05-06T07:08:09.123456789Z","ifindex":7,"ifname":"eth0","family":4,` +
				`"src":"192.0.2.1","sport":5353,"dst":"198.51.100.7","dport":9001,"ttl":64,"tos":185,` +
				`"id":4660,"df":true,"flow":0,"ip_options":"","ext_headers":[],"fragments":1,` +
				`"udp_len":13,"udp_checksum":48879,"len":5,"payload":"","dscp":46,"ecn":"ECT(1)","hlim":null,` +
				`"error":"udpstream: datagram not for the listened port"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			pr := newPrinter(&out, true)
			pr.names.lookup = func(int) string { return "eth0" }
			if err := pr.packet(tc.p); err != nil {
				t.Fatal(err)
			}
			if got := out.String(); got != tc.want+"\n" {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			checkSchema(t, strings.TrimSuffix(out.String(), "\n"), tc.p.Err != nil)
		})
	}
}

func TestText(t *testing.T) {
	h4 := testHeader()
	h6 := testHeader()
	h6.Version = 6
	h6.Src = netip.MustParseAddrPort("[::1]:40000")
	h6.Dst = netip.MustParseAddrPort("[::1]:9001")
	h6.DF, h6.ID, h6.FlowLabel, h6.TTL, h6.TOS = false, 0, 0x12345, 1, 0x02
	h6.IfIndex = 1
	names := map[int]string{7: "eth0"} // 1 unknown: shown as if1

	var out bytes.Buffer
	pr := newPrinter(&out, false)
	pr.names.lookup = func(i int) string { return names[i] }
	for _, p := range []udpstream.Packet[[]byte]{
		{Value: []byte("hello"), Header: h4},
		{Value: []byte("a\"b\\c\n\x00\xff"), Header: h6},
		{Value: bytes.Repeat([]byte("x"), 40), Header: h4},
		{Header: h4, Err: udpstream.ErrNotDestPort},
	} {
		if err := pr.packet(p); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`2024-05-06T07:08:09.123456Z  eth0     IPv4  192.0.2.1:5353 → 198.51.100.7:9001             ttl  64  tos 0xb9 dscp 46 ECT(1)   id 4660 DF        len     5  "hello"`,
		`2024-05-06T07:08:09.123456Z  if1      IPv6  [::1]:40000 → [::1]:9001                      hlim   1  tos 0x02 dscp  0 ECT(0)   flow 0x12345      len     8  "a\"b\\c\n\x00\xff"`,
		`2024-05-06T07:08:09.123456Z  eth0     IPv4  192.0.2.1:5353 → 198.51.100.7:9001             ttl  64  tos 0xb9 dscp 46 ECT(1)   id 4660 DF        len    40  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"…`,
		`2024-05-06T07:08:09.123456Z  eth0     IPv4  192.0.2.1:5353 → 198.51.100.7:9001             ttl  64  tos 0xb9 dscp 46 ECT(1)   id 4660 DF        len     5  error: udpstream: datagram not for the listened port`,
	}
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The columns line up across families, the values of ttl and hlim too.
	col := func(s, sub string) int { return len([]rune(s[:strings.Index(s, sub)])) + len(sub) }
	if a, b := col(got[0], "ttl"), col(got[1], "hlim"); a != b {
		t.Errorf("ttl value at %d in the IPv4 line, hlim value at %d in the IPv6 line", a, b)
	}
	for _, sub := range []string{"tos", "len"} {
		if a, b := col(got[0], sub), col(got[1], sub); a != b {
			t.Errorf("column %q at %d in the IPv4 line, %d in the IPv6 line", sub, a, b)
		}
	}
}

func TestIdentity(t *testing.T) {
	h := testHeader()
	h.DF, h.MF, h.Fragments, h.Options = false, true, 2, []byte{1, 1, 1, 0}
	if got, want := string(appendIdentity(nil, h)), "id 4660 MF opt 01010100 frags 2"; got != want {
		t.Errorf("IPv4: %q, want %q", got, want)
	}
	h = testHeader()
	h.Version, h.FlowLabel, h.ID, h.Fragments, h.ExtHeaders = 6, 1, 77, 3, []uint8{0, 44}
	if got, want := string(appendIdentity(nil, h)), "flow 0x00001 frag-id 77 ext 0,44 frags 3"; got != want {
		t.Errorf("IPv6: %q, want %q", got, want)
	}
}

func TestIfNamesCache(t *testing.T) {
	lookups := 0
	name := "eth0"
	c := ifNames{lookup: func(int) string { lookups++; return name }}
	t0 := time.Now()
	for i := range 100 {
		if got := c.name(3, t0.Add(time.Duration(i)*time.Millisecond)); got != "eth0" {
			t.Fatalf("name %q", got)
		}
	}
	if lookups != 1 {
		t.Errorf("%d lookups for one interface, want 1", lookups)
	}
	name = "renamed"
	if got := c.name(3, t0.Add(ifNameTTL)); got != "renamed" || lookups != 2 {
		t.Errorf("after the TTL: %q with %d lookups, want a fresh lookup", got, lookups)
	}
}

// statsKeys is the -stats contract: delivered and dropped, and every
// counter of the library's Stats by its JSON name.
func statsKeys() []string {
	keys := []string{"delivered", "dropped"}
	st := reflect.TypeFor[udpstream.Stats]()
	for f := range st.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "delivered" {
			keys = append(keys, name)
		}
	}
	return keys
}

// checkStats checks a -stats line: exactly the contract's keys, all whole
// numbers, dropped the sum of the reasons. It returns the counters.
func checkStats(t *testing.T, line string) map[string]uint64 {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal([]byte(line), &raw); err != nil {
		t.Fatalf("stats line %q: %v", line, err)
	}
	want := statsKeys()
	got := make([]string, 0, len(raw))
	m := map[string]uint64{}
	for k, v := range raw {
		got = append(got, k)
		f, ok := v.(float64)
		if !ok || f < 0 || f != math.Trunc(f) {
			t.Errorf("stats %s: %v is not a count", k, v)
		}
		m[k] = uint64(f)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("stats keys %q\nwant %q", got, want)
	}
	var sum uint64
	for k, v := range m {
		if k != "delivered" && k != "dropped" && k != "decode_errors" {
			sum += v
		}
	}
	if m["dropped"] != sum {
		t.Errorf("stats dropped %d, but the reasons add up to %d: %s", m["dropped"], sum, line)
	}
	return m
}

func TestStatsLine(t *testing.T) {
	st := udpstream.Stats{Delivered: 9, DecodeErrors: 1, OtherPort: 2, Malformed: 3, KernelDrops: 4}
	var out bytes.Buffer
	printStats(&out, st, 7)
	line := out.String()
	// The two datagrams delivered to the tool but not printed are
	// abandoned, and dropped.
	if !strings.HasPrefix(line, `{"delivered":7,"dropped":11,`) || strings.Count(line, "\n") != 1 {
		t.Errorf("stats line %q", line)
	}
	m := checkStats(t, strings.TrimSuffix(line, "\n"))
	if m["other_port"] != 2 || m["malformed"] != 3 || m["kernel_drops"] != 4 || m["decode_errors"] != 1 || m["abandoned"] != 2 {
		t.Errorf("counters %v", m)
	}
}

func TestPreview(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{nil, `""`},
		{[]byte("GET / HTTP/1.1\r\n"), `"GET / HTTP/1.1\r\n"`},
		{[]byte{0x7f, 0x80, '\t'}, `"\x7f\x80\t"`},
		{bytes.Repeat([]byte{0}, previewBytes), `"` + strings.Repeat(`\x00`, previewBytes) + `"`},
		{bytes.Repeat([]byte("é"), previewBytes), `"` + strings.Repeat(`\xc3\xa9`, previewBytes/2) + `"…`},
	} {
		if got := string(appendPreview(nil, tc.in)); got != tc.want {
			t.Errorf("preview of %q: %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		st        udpstream.Stats
		delivered uint64
		mode      udpstream.Mode
		want      string
	}{
		{udpstream.Stats{}, 0, udpstream.ModeRing, "udpstream: 0 datagrams delivered\n" +
			"udpstream: 0 datagrams dropped\n" +
			"udpstream: 0 frames dropped by the kernel (receive ring full)\n"},
		{udpstream.Stats{Delivered: 9, OtherPort: 2, BadUDPChecksum: 1, KernelDrops: 1}, 7, udpstream.ModeRing,
			"udpstream: 7 datagrams delivered\n" +
				"udpstream: 3 datagrams dropped: 2 to another port, 1 bad UDP checksum\n" +
				"udpstream: 1 frame dropped by the kernel (receive ring full)\n"},
		{udpstream.Stats{Delivered: 1, DecodeErrors: 1, FragTimeout: 1}, 1, udpstream.ModeRing,
			"udpstream: 1 datagram delivered, 1 decoder error\n" +
				"udpstream: 1 datagram dropped: 1 reassembly timed out\n" +
				"udpstream: 0 frames dropped by the kernel (receive ring full)\n"},
		{udpstream.Stats{Delivered: 4, KernelDrops: 2}, 4, udpstream.ModeSocket,
			"udpstream: 4 datagrams delivered\n" +
				"udpstream: 0 datagrams dropped\n" +
				"udpstream: 2 datagrams dropped by the kernel (socket buffer full)\n"},
	} {
		got := string(appendSummary(nil, tc.st, tc.delivered, tc.mode))
		if got != tc.want {
			t.Errorf("summary of %+v:\n%s\nwant\n%s", tc.st, got, tc.want)
		}
		for _, l := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
			if !strings.HasPrefix(l, "udpstream: ") || json.Valid([]byte(l)) {
				t.Errorf("summary line %q: want the tool's prefix, and no JSON", l)
			}
		}
	}
}

// TestSummaryReasons checks that the summary names every drop counter of
// the library, one at a time, so that a counter added to Stats cannot go
// missing from it.
func TestSummaryReasons(t *testing.T) {
	st := reflect.TypeFor[udpstream.Stats]()
	for f := range st.Fields() {
		var s udpstream.Stats
		reflect.ValueOf(&s).Elem().FieldByIndex(f.Index).SetUint(5)
		if s.Dropped() == 0 {
			continue // not a drop: delivered, decode errors, pending
		}
		var named uint64
		for _, r := range dropReasons {
			named += r.count(s)
		}
		if named+s.KernelDrops != s.Dropped() {
			t.Errorf("Stats.%s is a drop reason the summary does not name", f.Name)
		}
	}
}

// summaryRE matches the summary's first line.
var summaryRE = regexp.MustCompile(`^udpstream: ([0-9]+) datagrams? delivered`)

// checkSummary checks that stderr starts with the exit summary, with the
// number of datagrams delivered, and returns what follows it.
func checkSummary(t *testing.T, stderr []string, delivered int) []string {
	t.Helper()
	if len(stderr) < 3 {
		t.Fatalf("stderr %q, want the three lines of the summary", stderr)
	}
	m := summaryRE.FindStringSubmatch(stderr[0])
	if m == nil || m[1] != strconv.Itoa(delivered) ||
		!strings.Contains(stderr[1], "dropped") || !strings.Contains(stderr[2], "dropped by the kernel") {
		t.Errorf("summary %q, want %d delivered", stderr[:3], delivered)
	}
	return stderr[3:]
}

// hexOf is s as the -json payload field spells it.
func hexOf(s string) string { return hex.EncodeToString([]byte(s)) }
