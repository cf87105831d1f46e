// Package psltree reads the Public Suffix List compiled into
// golang.org/x/net/publicsuffix and extracts what that package cannot
// answer: which names are not rules of the list themselves but have public
// suffixes below them (amazonaws.com holds s3.amazonaws.com), and what those
// are. publicsuffix.PublicSuffix tells whether a given name is a suffix; it
// cannot list the suffixes below a name, and the policy's breadth check needs
// them to see that `*.amazonaws.com` reaches arbitrary S3 buckets.
//
// It decodes the tables of the x/net module (data/text, data/nodes,
// data/children, laid out as table.go describes) from the module's source
// directory; it is used by the generator of policy/psl_table.go and by the
// test that keeps that file equal to the x/net version in go.mod. Nothing
// at run time reads it.
package psltree

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
)

// Table is what Decode extracts.
type Table struct {
	// Version is the PSL revision x/net's table.go names.
	Version string
	// Parents maps every name that is not a rule of the list but has
	// public suffixes below it (a wildcard rule above may still make it a
	// suffix: *.run.app covers mtls.run.app) to the labels of its children,
	// sorted; "*" when a wildcard rule makes every child a suffix.
	// Exception rules ("!city.kawasaki.jp": names that are not suffixes)
	// are left out.
	Parents map[string][]string
}

// layout are the bit widths of table.go, read from it (they are generated
// per list revision).
type layout struct {
	numTLD                                                             uint32
	nodesBitsChildren, nodesBitsICANN, textOffset, textLength          uint
	childrenBitsWildcard, childrenBitsNodeType, childrenHi, childrenLo uint
}

const (
	nodeTypeNormal     = 0
	nodeTypeException  = 1
	nodeTypeParentOnly = 2
)

// Decode reads the publicsuffix package in dir (".../golang.org/x/net@vX/publicsuffix").
func Decode(dir string) (*Table, error) {
	src, err := os.ReadFile(filepath.Join(dir, "table.go"))
	if err != nil {
		return nil, fmt.Errorf("reading x/net's publicsuffix table: %w", err)
	}
	var l layout
	for _, c := range []struct {
		name string
		dst  *uint
	}{
		{"nodesBitsChildren", &l.nodesBitsChildren}, {"nodesBitsICANN", &l.nodesBitsICANN},
		{"nodesBitsTextOffset", &l.textOffset}, {"nodesBitsTextLength", &l.textLength},
		{"childrenBitsWildcard", &l.childrenBitsWildcard}, {"childrenBitsNodeType", &l.childrenBitsNodeType},
		{"childrenBitsHi", &l.childrenHi}, {"childrenBitsLo", &l.childrenLo},
	} {
		v, err := constant(src, c.name)
		if err != nil {
			return nil, err
		}
		*c.dst = uint(v)
	}
	n, err := constant(src, "numTLD")
	if err != nil {
		return nil, err
	}
	l.numTLD = uint32(n)
	m := regexp.MustCompile(`const version = "([^"]*)"`).FindSubmatch(src)
	if m == nil {
		return nil, fmt.Errorf("x/net's publicsuffix table.go names no version")
	}
	files := map[string][]byte{}
	for _, f := range []string{"text", "nodes", "children"} {
		if files[f], err = os.ReadFile(filepath.Join(dir, "data", f)); err != nil {
			return nil, fmt.Errorf("reading x/net's publicsuffix data: %w", err)
		}
	}
	d := decoder{l: l, text: files["text"], nodes: files["nodes"], children: files["children"]}
	t := &Table{Version: string(m[1]), Parents: map[string][]string{}}
	if err := d.walk(0, l.numTLD, "", t); err != nil {
		return nil, err
	}
	return t, nil
}

func constant(src []byte, name string) (uint64, error) {
	m := regexp.MustCompile(`\b` + name + `\s*=\s*(\d+)`).FindSubmatch(src)
	if m == nil {
		return 0, fmt.Errorf("x/net's publicsuffix table.go has no constant %s", name)
	}
	return strconv.ParseUint(string(m[1]), 10, 32)
}

type decoder struct {
	l                     layout
	text, nodes, children []byte
}

func (d *decoder) node(i uint32) (uint64, error) {
	o := int(i) * 5
	if o+5 > len(d.nodes) {
		return 0, fmt.Errorf("node %d out of range", i)
	}
	u := d.nodes[o:]
	return uint64(u[4]) | uint64(u[3])<<8 | uint64(u[2])<<16 | uint64(u[1])<<24 | uint64(u[0])<<32, nil
}

func (d *decoder) child(i uint32) (uint32, error) {
	o := int(i) * 4
	if o+4 > len(d.children) {
		return 0, fmt.Errorf("children entry %d out of range", i)
	}
	u := d.children[o:]
	return uint32(u[3]) | uint32(u[2])<<8 | uint32(u[1])<<16 | uint32(u[0])<<24, nil
}

// walk visits the nodes [lo, hi) below suffix.
func (d *decoder) walk(lo, hi uint32, suffix string, t *Table) error {
	l := d.l
	for i := lo; i < hi; i++ {
		x, err := d.node(i)
		if err != nil {
			return err
		}
		length := x & (1<<l.textLength - 1)
		off := (x >> l.textLength) & (1<<l.textOffset - 1)
		if off+length > uint64(len(d.text)) {
			return fmt.Errorf("node %d: label out of range", i)
		}
		name := string(d.text[off : off+length])
		if suffix != "" {
			name += "." + suffix
		}
		ci := uint32(x>>(l.textLength+l.textOffset+l.nodesBitsICANN)) & (1<<l.nodesBitsChildren - 1)
		c, err := d.child(ci)
		if err != nil {
			return err
		}
		clo := c & (1<<l.childrenLo - 1)
		c >>= l.childrenLo
		chi := c & (1<<l.childrenHi - 1)
		c >>= l.childrenHi
		typ := c & (1<<l.childrenBitsNodeType - 1)
		c >>= l.childrenBitsNodeType
		wildcard := c&(1<<l.childrenBitsWildcard-1) != 0
		if typ == nodeTypeParentOnly && suffix != "" {
			var kids []string
			for j := clo; j < chi; j++ {
				kx, err := d.node(j)
				if err != nil {
					return err
				}
				kc, err := d.child(uint32(kx>>(l.textLength+l.textOffset+l.nodesBitsICANN)) & (1<<l.nodesBitsChildren - 1))
				if err != nil {
					return err
				}
				if (kc>>(l.childrenLo+l.childrenHi))&(1<<l.childrenBitsNodeType-1) == nodeTypeException {
					continue
				}
				klen := kx & (1<<l.textLength - 1)
				koff := (kx >> l.textLength) & (1<<l.textOffset - 1)
				kids = append(kids, string(d.text[koff:koff+klen]))
			}
			if wildcard {
				kids = append(kids, "*")
			}
			slices.Sort(kids)
			if len(kids) > 0 {
				t.Parents[name] = kids
			}
		}
		if err := d.walk(clo, chi, name, t); err != nil {
			return err
		}
	}
	return nil
}
