//go:build race

package udpstream

// raceEnabled reports whether the race detector is on: sync.Pool then
// drops some of what it is given, on purpose, so that pooled memory is
// allocated anew now and then.
const raceEnabled = true
