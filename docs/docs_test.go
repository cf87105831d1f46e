package docs

import (
	"bufio"
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// modulePath is this repository's Go module.
const modulePath = "github.com/egressd/egressd"

// repo is the repository as the tests see it: every text file, read once.
type repo struct {
	root  string
	files map[string][]byte // slash-separated path relative to root → content
	paths []string          // the keys of files, sorted
}

var loaded *repo

// loadRepo reads every text file of the repository: everything under the
// module root but .git, build output (bin/, dist/, *.test, *.prof) and
// binary files.
func loadRepo(t *testing.T) *repo {
	t.Helper()
	if loaded != nil {
		return loaded
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || !bytes.Contains(b, []byte("module "+modulePath+"\n")) {
		t.Fatalf("%s is not the root of module %s (go.mod: %v)", root, modulePath, err)
	}
	r := &repo{root: root, files: map[string][]byte{}}
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		name := d.Name()
		if d.IsDir() {
			if name == ".git" || rel == "bin" || rel == "dist" {
				return filepath.SkipDir
			}
			return nil
		}
		if name == ".git" || strings.HasSuffix(name, ".test") || strings.HasSuffix(name, ".prof") || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0 {
			return nil // binary
		}
		r.files[rel] = b
		r.paths = append(r.paths, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(r.paths)
	loaded = r
	return r
}

// withExt returns the paths ending in one of exts, sorted.
func (r *repo) withExt(exts ...string) []string {
	var out []string
	for _, p := range r.paths {
		for _, e := range exts {
			if strings.HasSuffix(p, e) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// exists reports whether rel (slash-separated, relative to the root) is a
// file or directory of the repository.
func (r *repo) exists(rel string) bool {
	_, err := os.Stat(filepath.Join(r.root, filepath.FromSlash(rel)))
	return err == nil
}

// lines calls fn for every line of file (1-based), outside fenced code
// blocks when prose is true.
func lines(b []byte, prose bool, fn func(n int, line string)) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	fenced := false
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if prose && strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if prose && fenced {
			continue
		}
		fn(n, line)
	}
}

// ---- the threat catalogue ---------------------------------------------------

const threatsPage = "docs/threats.md"

var (
	entryHeading = regexp.MustCompile(`^### ([A-Z][0-9]+)\. \S`)
	classHeading = regexp.MustCompile(`^## ([A-Z])\. \S`)
	// A citation: "THREATS A5", "THREATS F4, F5, G1", "THREATS A6/A7",
	// "THREATS B7-B9", "THREATS G" (a whole class).
	citation  = regexp.MustCompile(`\bTHREATS ([A-Z][0-9]*(?:(?:, | and |/|-|–)[A-Z][0-9]*)*)\b`)
	citedItem = regexp.MustCompile(`([A-Z])([0-9]*)(?:[-–]([A-Z])([0-9]+))?`)
)

// catalogue returns the ids threats.md defines: every "### X1. Title" entry
// and every "## X. Title" class.
func catalogue(t *testing.T, r *repo) map[string]bool {
	t.Helper()
	b, ok := r.files[threatsPage]
	if !ok {
		t.Fatalf("%s is missing", threatsPage)
	}
	ids := map[string]bool{}
	lines(b, true, func(n int, line string) {
		for _, re := range []*regexp.Regexp{entryHeading, classHeading} {
			if m := re.FindStringSubmatch(line); m != nil {
				if ids[m[1]] {
					t.Errorf("%s:%d: %s is defined twice", threatsPage, n, m[1])
				}
				ids[m[1]] = true
			}
		}
	})
	if len(ids) == 0 {
		t.Fatalf("%s defines no entries (### A1. Title)", threatsPage)
	}
	return ids
}

// citedIDs expands one citation's list: "A1, E1-E3" → A1 E1 E2 E3.
func citedIDs(list string) []string {
	var out []string
	for _, m := range citedItem.FindAllStringSubmatch(list, -1) {
		if m[3] == "" || m[3] != m[1] || m[2] == "" {
			out = append(out, m[1]+m[2])
			if m[3] != "" {
				out = append(out, m[3]+m[4])
			}
			continue
		}
		lo, _ := strconv.Atoi(m[2])
		hi, _ := strconv.Atoi(m[4])
		for i := lo; i <= hi; i++ {
			out = append(out, m[1]+strconv.Itoa(i))
		}
	}
	return out
}

func TestCitedIDsExpandsListsAndRanges(t *testing.T) {
	for in, want := range map[string][]string{
		"A5":         {"A5"},
		"F4, F5, G1": {"F4", "F5", "G1"},
		"A6/A7":      {"A6", "A7"},
		"B7-B9":      {"B7", "B8", "B9"},
		"A1, E1-E3":  {"A1", "E1", "E2", "E3"},
		"D6 and E2":  {"D6", "E2"},
		"G":          {"G"},
	} {
		if got := citedIDs(in); !slices.Equal(got, want) {
			t.Errorf("citedIDs(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEveryCitedThreatIsInTheCatalogue: a comment, test or page that cites
// a threat ("THREATS A5") points at an entry of threats.md, in every text
// file of the repository.
func TestEveryCitedThreatIsInTheCatalogue(t *testing.T) {
	r := loadRepo(t)
	ids := catalogue(t, r)
	cited := 0
	for _, p := range r.paths {
		lines(r.files[p], false, func(n int, line string) {
			for _, m := range citation.FindAllStringSubmatch(line, -1) {
				for _, id := range citedIDs(m[1]) {
					cited++
					if !ids[id] {
						t.Errorf("%s:%d: cites THREATS %s, which %s does not define (### %s. Title)", p, n, id, threatsPage, id)
					}
				}
			}
		})
	}
	if cited == 0 {
		t.Error("no THREATS citation found anywhere: the scan is broken")
	}
}

// ---- tests the pages name ------------------------------------------------------

var (
	codeSpan = regexp.MustCompile("`([^`\n]+)`")
	testFile = regexp.MustCompile(`^[A-Za-z0-9_./-]+_test\.go$`)
	testName = regexp.MustCompile(`^((?:Test|Fuzz|Benchmark)[A-Z0-9_][A-Za-z0-9_]*)((?:/[A-Za-z0-9_-]+)*)$`)
	testFunc = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)\(`)
)

var numberedItem = regexp.MustCompile(`^[0-9]+\. `)

// blockStart reports whether a Markdown line starts a new block (heading,
// list item, table row) or is blank: a file named earlier no longer applies.
func blockStart(line string) bool {
	s := strings.TrimSpace(line)
	return s == "" || line == s && (strings.HasPrefix(s, "#") || strings.HasPrefix(s, "- ") ||
		strings.HasPrefix(s, "* ") || strings.HasPrefix(s, "|") || numberedItem.MatchString(s))
}

// TestEveryTestTheDocsCiteExists: a test, fuzz target or benchmark a page
// names in backquotes exists; named after a test file in the same
// paragraph or list item (`proxy/explicit_test.go` `TestX`), in that file;
// a subtest (`TestLauncher/Name`) as a name its parent runs.
func TestEveryTestTheDocsCiteExists(t *testing.T) {
	r := loadRepo(t)
	where := map[string][]string{} // function → files defining it
	for _, p := range r.withExt("_test.go") {
		for _, m := range testFunc.FindAllSubmatch(r.files[p], -1) {
			where[string(m[1])] = append(where[string(m[1])], p)
		}
	}
	checked := 0
	for _, page := range r.withExt(".md") {
		file := ""
		lines(r.files[page], true, func(n int, line string) {
			if blockStart(line) {
				file = ""
			}
			for _, m := range codeSpan.FindAllStringSubmatch(line, -1) {
				span := m[1]
				if testFile.MatchString(span) {
					file = span
					if _, ok := r.files[file]; !ok {
						t.Errorf("%s:%d: names %s, which does not exist", page, n, file)
					}
					continue
				}
				tm := testName.FindStringSubmatch(span)
				if tm == nil {
					continue
				}
				checked++
				fn, sub := tm[1], strings.TrimPrefix(tm[2], "/")
				files := where[fn]
				switch {
				case len(files) == 0:
					t.Errorf("%s:%d: names %s, which no _test.go file defines", page, n, fn)
					continue
				case file != "" && !slices.Contains(files, file):
					t.Errorf("%s:%d: names %s in %s, but it is in %s", page, n, fn, file, strings.Join(files, ", "))
					continue
				}
				for _, s := range strings.Split(sub, "/") {
					if s == "" {
						continue
					}
					found := false
					for _, f := range files {
						found = found || bytes.Contains(r.files[f], []byte(strconv.Quote(s)))
					}
					if !found {
						t.Errorf("%s:%d: names subtest %s of %s, which %s does not run", page, n, s, fn, strings.Join(files, ", "))
					}
				}
			}
		})
	}
	if checked < 50 {
		t.Errorf("only %d test names found in the pages; %s alone cites more: the scan is broken", checked, threatsPage)
	}
}

// ---- nothing points outside -----------------------------------------------------

// outside are references to documents that live outside the repository.
// (The patterns are spelt so that this file does not match them itself.)
var outside = []*regexp.Regexp{
	regexp.MustCompile(`\.\./share[d]`),
	regexp.MustCompile(`share[d]/(DESIG[N]|THREAT[S]|STYL[E])`),
	regexp.MustCompile(`\b(DESIG[N]|STYL[E])\b`),
	regexp.MustCompile(`\bTHREAT[S]\.md\b`),
}

// sharedDir is the wider check for .go and .md files: no path through a
// directory named "shared" at all (the grep of issue 9's "Done when").
var sharedDir = regexp.MustCompile(`share[d]/`)

var (
	mdLink     = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	mdHeading  = regexp.MustCompile(`^#{1,6} (.+)$`)
	repoPath   = regexp.MustCompile(`^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.@-]+)+/?$`)
	externalTo = []string{"http://", "https://", "mailto:"}
)

// slug is GitHub's anchor for a heading: lower case, letters, digits, '-'
// and '_' kept, spaces to '-', everything else dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case unicode.IsLetter(c) || unicode.IsDigit(c) || c == '-' || c == '_':
			b.WriteRune(c)
		case c == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// anchors returns the anchors of a Markdown page's headings.
func anchors(b []byte) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	lines(b, true, func(_ int, line string) {
		m := mdHeading.FindStringSubmatch(line)
		if m == nil {
			return
		}
		s := slug(m[1])
		if k := seen[s]; k > 0 {
			out[s+"-"+strconv.Itoa(k)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	})
	return out
}

func TestSlugIsGitHubs(t *testing.T) {
	for in, want := range map[string]string{
		"How each stream is decided":            "how-each-stream-is-decided",
		"`launcher explain`, and `--json`":      "launcher-explain-and---json",
		"A1. Domain fronting #1: CONNECT ≠ SNI": "a1-domain-fronting-1-connect--sni",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNothingPointsOutsideTheRepository: no file refers to documents kept
// outside the repository; every relative link of every Markdown page (and
// its #anchor) resolves; every repository path the pages name in
// backquotes exists.
func TestNothingPointsOutsideTheRepository(t *testing.T) {
	r := loadRepo(t)
	for _, p := range r.paths {
		goOrMD := strings.HasSuffix(p, ".go") || strings.HasSuffix(p, ".md")
		lines(r.files[p], false, func(n int, line string) {
			for _, re := range outside {
				if m := re.FindString(line); m != "" {
					t.Errorf("%s:%d: %q refers to a document outside the repository; point to docs/design.md, docs/threats.md or cite THREATS ids", p, n, m)
				}
			}
			if goOrMD && sharedDir.MatchString(line) {
				t.Errorf("%s:%d: %q: no path in a .go or .md file may name a shared directory", p, n, strings.TrimSpace(line))
			}
		})
	}

	top := map[string]bool{}
	for _, p := range r.paths {
		top[strings.SplitN(p, "/", 2)[0]] = true
	}
	pageAnchors := map[string]map[string]bool{}
	anchorsOf := func(page string) map[string]bool {
		if a, ok := pageAnchors[page]; ok {
			return a
		}
		a := anchors(r.files[page])
		pageAnchors[page] = a
		return a
	}
	links := 0
	for _, page := range r.withExt(".md") {
		dir := path.Dir(page)
		lines(r.files[page], true, func(n int, line string) {
			for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if slices.ContainsFunc(externalTo, func(s string) bool { return strings.HasPrefix(target, s) }) {
					continue
				}
				links++
				file, anchor, _ := strings.Cut(target, "#")
				rel := page
				if file != "" {
					rel = path.Clean(path.Join(dir, file))
					if rel == ".." || strings.HasPrefix(rel, "../") || path.IsAbs(file) {
						t.Errorf("%s:%d: link %s leaves the repository", page, n, target)
						continue
					}
					if !r.exists(rel) {
						t.Errorf("%s:%d: link %s: %s does not exist", page, n, target, rel)
						continue
					}
				}
				if anchor != "" && strings.HasSuffix(rel, ".md") && !anchorsOf(rel)[anchor] {
					t.Errorf("%s:%d: link %s: %s has no heading #%s", page, n, target, rel, anchor)
				}
			}
			for _, m := range codeSpan.FindAllStringSubmatch(line, -1) {
				span := strings.TrimSuffix(m[1], ":")
				if !repoPath.MatchString(span) || !top[strings.SplitN(span, "/", 2)[0]] {
					continue
				}
				if !r.exists(span) {
					t.Errorf("%s:%d: names %s, which does not exist", page, n, span)
				}
			}
		})
	}
	if links == 0 {
		t.Error("no relative link found in any page: the scan is broken")
	}
}

// ---- the package table ------------------------------------------------------------

const designPage = "docs/design.md"

// packagePages are the pages with a package table: the page, and whether
// its table has the "libraries" column.
var packagePages = []struct {
	page      string
	libraries bool
}{
	{designPage, true},
	{"README.md", false},
}

// pkgRow is one row of a package table.
type pkgRow struct {
	line      int
	pkgs      []string
	mayImport []string
	libraries []string
}

// tableCells splits a Markdown table row into its cells; "\|" does not
// split.
func tableCells(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	var out []string
	var cell strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line):
			cell.WriteByte(line[i])
			cell.WriteByte(line[i+1])
			i++
		case line[i] == '|':
			out = append(out, cell.String())
			cell.Reset()
		default:
			cell.WriteByte(line[i])
		}
	}
	return append(out, cell.String())
}

// codeSpans returns the backquoted spans of s.
func codeSpans(s string) []string {
	var out []string
	for _, m := range codeSpan.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// packageTable parses the first table of page whose header has the
// columns "package" and "may import" (and "libraries", when libraries).
func packageTable(t *testing.T, r *repo, page string, libraries bool) []*pkgRow {
	t.Helper()
	var (
		rows                   []*pkgRow
		inTable, done          bool
		colPkg, colMay, colLib = -1, -1, -1
	)
	lines(r.files[page], true, func(n int, line string) {
		if done {
			return
		}
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			done = inTable
			return
		}
		c := tableCells(line)
		if !inTable {
			colPkg, colMay, colLib = -1, -1, -1
			for i, h := range c {
				switch strings.TrimSpace(h) {
				case "package":
					colPkg = i
				case "may import":
					colMay = i
				case "libraries":
					colLib = i
				}
			}
			inTable = colPkg == 0 && colMay > 0 && (colLib > 0 || !libraries)
			return
		}
		if strings.Trim(strings.TrimSpace(line), "|-: ") == "" {
			return // the delimiter row
		}
		if len(c) <= max(colPkg, colMay, colLib) {
			t.Errorf("%s:%d: package table row has %d cells", page, n, len(c))
			return
		}
		row := &pkgRow{line: n, pkgs: codeSpans(c[colPkg]), mayImport: codeSpans(c[colMay])}
		if colLib > 0 {
			row.libraries = codeSpans(c[colLib])
		}
		rows = append(rows, row)
	})
	if len(rows) == 0 {
		t.Fatalf("%s has no package table (columns: package, may import%s)", page, map[bool]string{true: ", libraries"}[libraries])
	}
	return rows
}

// goPackage is one directory of Go files.
type goPackage struct {
	dir              string // slash-separated, relative to the root
	name             string // the package clause of its non-test files
	imports          []string
	testOnly         bool
	files, testFiles []*ast.File
	fset             *token.FileSet
}

// goPackages parses every Go file of the repository (testdata excluded).
func goPackages(t *testing.T, r *repo) map[string]*goPackage {
	t.Helper()
	pkgs := map[string]*goPackage{}
	for _, p := range r.withExt(".go") {
		if slices.Contains(strings.Split(p, "/"), "testdata") {
			continue
		}
		dir := path.Dir(p)
		g := pkgs[dir]
		if g == nil {
			g = &goPackage{dir: dir, fset: token.NewFileSet()}
			pkgs[dir] = g
		}
		f, err := parser.ParseFile(g.fset, p, r.files[p], parser.ParseComments)
		if err != nil {
			t.Fatalf("parsing %s: %v", p, err)
		}
		if strings.HasSuffix(p, "_test.go") {
			g.testFiles = append(g.testFiles, f)
		} else {
			g.files = append(g.files, f)
			g.name = f.Name.Name
		}
	}
	for _, g := range pkgs {
		from := g.files
		if len(from) == 0 {
			g.testOnly, from = true, g.testFiles
		}
		self := modulePath + "/" + g.dir
		seen := map[string]bool{}
		for _, f := range from {
			for _, is := range f.Imports {
				ip, _ := strconv.Unquote(is.Path.Value)
				if ip != self && !seen[ip] {
					seen[ip] = true
					g.imports = append(g.imports, ip)
				}
			}
		}
		slices.Sort(g.imports)
	}
	return pkgs
}

// requiredModules returns the module paths go.mod requires.
func requiredModules(t *testing.T, r *repo) []string {
	t.Helper()
	var mods []string
	inBlock := false
	lines(r.files["go.mod"], false, func(_ int, line string) {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == "require" && len(f) > 1 && f[1] == "(":
			inBlock = true
		case f[0] == ")":
			inBlock = false
		case f[0] == "require" && len(f) >= 3:
			mods = append(mods, f[1])
		case inBlock && len(f) >= 2:
			mods = append(mods, f[0])
		}
	})
	return mods
}

// moduleOf returns the required module an import path belongs to.
func moduleOf(ip string, mods []string) string {
	best := ""
	for _, m := range mods {
		if (ip == m || strings.HasPrefix(ip, m+"/")) && len(m) > len(best) {
			best = m
		}
	}
	return best
}

// TestPackageTableMatchesTheImports: the package tables of design.md and
// the README have one row for every package of the repository and none for
// a package that does not exist, and each package imports only what its
// row allows, from this module ("may import") and, in design.md, from
// outside the standard library ("libraries": a module of go.mod, spelt in
// full or by its last path elements).
func TestPackageTableMatchesTheImports(t *testing.T) {
	r := loadRepo(t)
	pkgs := goPackages(t, r)
	mods := requiredModules(t, r)
	libMatch := func(mod, l string) bool { return mod == l || strings.HasSuffix(mod, "/"+l) }
	dirs := slices.Sorted(maps.Keys(pkgs))
	for _, pp := range packagePages {
		page := pp.page
		rowOf := map[string]*pkgRow{}
		for _, row := range packageTable(t, r, page, pp.libraries) {
			if len(row.pkgs) == 0 {
				t.Errorf("%s:%d: package table row names no package", page, row.line)
			}
			for _, p := range row.pkgs {
				if rowOf[p] != nil {
					t.Errorf("%s:%d: %s has a row already (line %d)", page, row.line, p, rowOf[p].line)
				}
				rowOf[p] = row
				if pkgs[p] == nil {
					t.Errorf("%s:%d: the package table names %s, which is no package of the repository", page, row.line, p)
				}
			}
			for _, p := range row.mayImport {
				if pkgs[p] == nil {
					t.Errorf("%s:%d: may import %s, which is no package of the repository", page, row.line, p)
				}
			}
			for _, l := range row.libraries {
				if !slices.ContainsFunc(mods, func(m string) bool { return libMatch(m, l) }) {
					t.Errorf("%s:%d: library %s is no module go.mod requires", page, row.line, l)
				}
			}
		}
		for _, d := range dirs {
			g, row := pkgs[d], rowOf[d]
			if row == nil {
				t.Errorf("%s has no row in %s's package table: add | `%s` | its one job | may import |", d, page, d)
				continue
			}
			for _, ip := range g.imports {
				switch {
				case strings.HasPrefix(ip, modulePath+"/"):
					dep := strings.TrimPrefix(ip, modulePath+"/")
					if !slices.Contains(row.mayImport, dep) {
						t.Errorf("%s imports %s, which its row (%s:%d) does not allow: add it there, or do not import it", d, dep, page, row.line)
					}
				case !strings.Contains(strings.SplitN(ip, "/", 2)[0], "."):
					// the standard library
				case !pp.libraries:
				default:
					mod := moduleOf(ip, mods)
					if mod == "" {
						t.Errorf("%s imports %s, which belongs to no module go.mod requires", d, ip)
						continue
					}
					if !slices.ContainsFunc(row.libraries, func(l string) bool { return libMatch(mod, l) }) {
						t.Errorf("%s imports %s (module %s), which its row (%s:%d) does not list under libraries", d, ip, mod, page, row.line)
					}
				}
			}
		}
	}
}

// TestOnlyCommandsExit: os.Exit and log.Fatal end the process without
// running anyone's cleanup, so only a command (package main) calls them.
func TestOnlyCommandsExit(t *testing.T) {
	r := loadRepo(t)
	pkgs := goPackages(t, r)
	for _, d := range slices.Sorted(maps.Keys(pkgs)) {
		g := pkgs[d]
		if g.name == "main" {
			continue
		}
		for _, f := range g.files {
			names := map[string]string{} // local name → import path
			for _, is := range f.Imports {
				ip, _ := strconv.Unquote(is.Path.Value)
				name := path.Base(ip)
				if is.Name != nil {
					name = is.Name.Name
				}
				names[name] = ip
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				x, ok := sel.X.(*ast.Ident)
				if !ok {
					return true
				}
				ip, fn := names[x.Name], sel.Sel.Name
				if ip == "os" && fn == "Exit" || ip == "log" && strings.HasPrefix(fn, "Fatal") {
					t.Errorf("%s: package %s calls %s.%s; only commands may end the process", g.fset.Position(call.Pos()), g.name, ip, fn)
				}
				return true
			})
		}
	}
}

// maxFuncLines is the longest a function of the launcher's packages may
// be, from its func line to its closing brace.
const maxFuncLines = 80

// TestLauncherFunctionsAreShort: no function (or method) of sandbox, its
// subpackages or cmd/launcher is longer than maxFuncLines: a reviewer reads
// each in one screen, and a long one is split by concern (the signal state
// machine, the mount builder, the seccomp parser were).
func TestLauncherFunctionsAreShort(t *testing.T) {
	r := loadRepo(t)
	pkgs := goPackages(t, r)
	checked := 0
	for _, d := range slices.Sorted(maps.Keys(pkgs)) {
		if d != "cmd/launcher" && d != "sandbox" && !strings.HasPrefix(d, "sandbox/") {
			continue
		}
		g := pkgs[d]
		for _, f := range g.files {
			for _, decl := range f.Decls {
				fn, ok := decl.(*ast.FuncDecl)
				if !ok || fn.Body == nil {
					continue
				}
				checked++
				start, end := g.fset.Position(fn.Pos()), g.fset.Position(fn.Body.Rbrace)
				if n := end.Line - start.Line + 1; n > maxFuncLines {
					t.Errorf("%s: %s is %d lines, over %d: split it by concern", start, fn.Name.Name, n, maxFuncLines)
				}
			}
		}
	}
	if checked < 100 {
		t.Errorf("checked %d functions: the launcher's packages were not found", checked)
	}
}

// TestPackageTableParserSeesEveryColumn guards the parser above against a
// silent change of the tables' shape: a table read with the wrong columns
// would check nothing.
func TestPackageTableParserSeesEveryColumn(t *testing.T) {
	r := loadRepo(t)
	for _, pp := range packagePages {
		rows := packageTable(t, r, pp.page, pp.libraries)
		var libs, may int
		for _, row := range rows {
			libs += len(row.libraries)
			may += len(row.mayImport)
		}
		if len(rows) < 10 || may == 0 || pp.libraries && libs == 0 {
			t.Errorf("%s's package table: %d rows, %d may-import and %d library entries read; its columns were not found", pp.page, len(rows), may, libs)
		}
	}
}

// TestReadmeListsEveryPage: every page under docs/ is linked from the
// README, so a reader finds it.
func TestReadmeListsEveryPage(t *testing.T) {
	r := loadRepo(t)
	linked := map[string]bool{}
	for _, m := range mdLink.FindAllStringSubmatch(string(r.files["README.md"]), -1) {
		file, _, _ := strings.Cut(m[1], "#")
		linked[path.Clean(file)] = true
	}
	for _, p := range r.withExt(".md") {
		if strings.HasPrefix(p, "docs/") && !linked[p] {
			t.Errorf("README.md does not link %s: add it to its Documentation table", p)
		}
	}
}

// TestTablesAreWellFormed: every row of every Markdown table has as many
// cells as its header (GitHub drops the cells past the header's and leaves
// missing ones empty, so a stray '|' in a cell silently shifts the rest),
// and the delimiter row follows the header.
func TestTablesAreWellFormed(t *testing.T) {
	r := loadRepo(t)
	tables := 0
	for _, page := range r.withExt(".md") {
		width, row := 0, 0
		lines(r.files[page], true, func(n int, line string) {
			if !strings.HasPrefix(strings.TrimSpace(line), "|") {
				width, row = 0, 0
				return
			}
			c := tableCells(line)
			row++
			switch {
			case row == 1:
				width = len(c)
				tables++
			case row == 2 && strings.Trim(strings.TrimSpace(line), "|-: ") != "":
				t.Errorf("%s:%d: a table's second row must be its delimiter row (|---|---|)", page, n)
			case len(c) != width:
				t.Errorf("%s:%d: table row has %d cells, its header %d (an unescaped '|'?)", page, n, len(c), width)
			}
		})
	}
	if tables == 0 {
		t.Error("no table found in any page: the scan is broken")
	}
}
