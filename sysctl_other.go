//go:build !linux

package udpstream

// readNetRules returns Linux's defaults: there is no namespace to read.
func readNetRules() *netRules {
	r := defaultRules
	return &r
}
