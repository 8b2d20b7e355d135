package udpstream

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The README and the CI script are read by people setting up the project:
// these tests keep them saying what the code and the tools do.

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeRaceNeedsGCC checks that the README's first screen gives
// exactly two commands, the demo and the tests, and says what the race
// detector of the second needs; and that CI installs it.
func TestReadmeRaceNeedsGCC(t *testing.T) {
	readme := readFile(t, "README.md")
	first, _, _ := strings.Cut(readme, "\n## ")
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(first, -1)
	if len(blocks) != 1 || strings.Count(blocks[0][1], "\n") != 2 ||
		!strings.Contains(blocks[0][1], "go run ./cmd/udpstream -demo") || !strings.Contains(blocks[0][1], "go test -race ./...") {
		t.Errorf("README's first screen: want one sh block of two commands, the demo and the tests; got %q", blocks)
	}
	for _, want := range []string{"gcc", "CGO_ENABLED=1"} {
		if !strings.Contains(first, want) {
			t.Errorf("README's first screen does not say the race detector needs %s", want)
		}
	}
	ci := readFile(t, ".ci/run")
	if !strings.Contains(ci, "command -v gcc") || !strings.Contains(ci, "apt-get install -y -qq gcc") {
		t.Errorf(".ci/run does not install gcc where it is missing")
	}
}

// TestReadmeAgreesWithCode checks what the README says of the API against
// the code: the default buffer size wherever it is named, the methods of
// Stream and the sentinel errors.
func TestReadmeAgreesWithCode(t *testing.T) {
	readme := strings.Join(strings.Fields(readFile(t, "README.md")), " ")
	for _, m := range regexp.MustCompile(`default (\d+) MiB`).FindAllStringSubmatch(readme, -1) {
		if m[1] != fmt.Sprint(DefaultBufferSize>>20) {
			t.Errorf("README: %q, but DefaultBufferSize is %d MiB", m[0], DefaultBufferSize>>20)
		}
	}
	if !strings.Contains(readme, fmt.Sprintf("`WithBufferSize` (kernel ring per family, default %d MiB)", DefaultBufferSize>>20)) {
		t.Errorf("README does not give WithBufferSize's default, %d MiB", DefaultBufferSize>>20)
	}

	_, methods, _ := strings.Cut(readme, "returns a `*Stream[T]` with ")
	methods, _, _ = strings.Cut(methods, ".")
	st := reflect.TypeFor[*Stream[struct{}]]()
	for i := range st.NumMethod() {
		if name := st.Method(i).Name; !strings.Contains(methods, "`"+name+"`") {
			t.Errorf("README's list of Stream's methods (%q) lacks %s", methods, name)
		}
	}

	_, errs, _ := strings.Cut(readme, "Errors are sentinels for `errors.Is`: ")
	errs, _, _ = strings.Cut(errs, ";")
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, spec := range g.Specs {
				for _, n := range spec.(*ast.ValueSpec).Names {
					if n.IsExported() && strings.HasPrefix(n.Name, "Err") && !strings.Contains(errs, "`"+n.Name+"`") {
						t.Errorf("README's list of sentinel errors (%q) lacks %s", errs, n.Name)
					}
				}
			}
		}
	}
}
