package udpstream

import (
	"bytes"
	"compress/gzip"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// readNetRules reads the sysctls of the calling thread's network namespace
// that change what the kernel delivers (see netRules). A value that cannot
// be read keeps Linux's default.
func readNetRules() *netRules {
	r := defaultRules
	r.maxHBHOpts = sysctlInt("ipv6/max_hbh_opts_number", r.maxHBHOpts)
	r.maxDstOpts = sysctlInt("ipv6/max_dst_opts_number", r.maxDstOpts)
	r.maxHBHLen = sysctlInt("ipv6/max_hbh_opts_length", r.maxHBHLen)
	r.maxDstLen = sysctlInt("ipv6/max_dst_opts_length", r.maxDstLen)
	r.fragTime4 = time.Duration(sysctlInt("ipv4/ipfrag_time", 30)) * time.Second
	r.fragTime6 = time.Duration(sysctlInt("ipv6/ip6frag_time", 60)) * time.Second
	r.mip6 = kernelHasMIP6()

	all := readIfRules("all", ifRules{})
	r.def = combineIfRules(all, readIfRules("default", ifRules{}))
	r.ifs = map[int]ifRules{}
	if ifs, err := net.Interfaces(); err == nil {
		for _, ifi := range ifs {
			r.ifs[ifi.Index] = combineIfRules(all, readIfRules(ifi.Name, r.def))
		}
	}
	return &r
}

// readIfRules reads one conf directory (all, default or an interface).
func readIfRules(name string, def ifRules) ifRules {
	b2i := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	return ifRules{
		sourceRoute4: sysctlInt("ipv4/conf/"+name+"/accept_source_route", b2i(def.sourceRoute4)) > 0,
		rpFilter:     sysctlInt("ipv4/conf/"+name+"/rp_filter", def.rpFilter),
		seg6:         sysctlInt("ipv6/conf/"+name+"/seg6_enabled", b2i(def.seg6)) > 0,
		rpl:          sysctlInt("ipv6/conf/"+name+"/rpl_seg_enabled", b2i(def.rpl)) > 0,
		acceptLocal:  sysctlInt("ipv4/conf/"+name+"/accept_local", b2i(def.acceptLocal)) > 0,
	}
}

// combineIfRules combines the all settings with an interface's, as the
// kernel does for each.
func combineIfRules(all, dev ifRules) ifRules {
	return ifRules{
		sourceRoute4: all.sourceRoute4 && dev.sourceRoute4,
		rpFilter:     max(all.rpFilter, dev.rpFilter),
		seg6:         all.seg6 && dev.seg6,
		rpl:          all.rpl && dev.rpl,
		acceptLocal:  all.acceptLocal || dev.acceptLocal,
	}
}

func sysctlInt(path string, def int) int {
	b, err := os.ReadFile("/proc/sys/net/" + path)
	if err != nil {
		return def
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return def
	}
	return v
}

// kernelHasMIP6 reports whether the running kernel is built with Mobile
// IPv6, from its configuration where the kernel exposes it; a kernel that
// does not is assumed to have it, as distributions build it. The running
// kernel's build does not change: it is read once.
var kernelHasMIP6 = sync.OnceValue(readKernelMIP6)

func readKernelMIP6() bool {
	var cfg []byte
	if f, err := os.Open("/proc/config.gz"); err == nil {
		defer f.Close()
		if z, err := gzip.NewReader(f); err == nil {
			cfg, _ = io.ReadAll(io.LimitReader(z, 4<<20))
		}
	}
	if cfg == nil {
		return true
	}
	return bytes.Contains(cfg, []byte("\nCONFIG_IPV6_MIP6=y")) || bytes.Contains(cfg, []byte("\nCONFIG_IPV6_MIP6=m"))
}
