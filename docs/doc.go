// Package docs is egressd's documentation: the Markdown pages beside this
// file (design.md, threats.md and the references). It has no code. Its
// tests hold the pages, and every other file of the repository, to the
// code:
//
//   - every THREATS id cited anywhere (`THREATS A5`, `THREATS B7-B9`) is
//     an entry of threats.md;
//   - every test, fuzz target and benchmark a page names exists, in the
//     file named beside it;
//   - nothing points at documents outside the repository, and every
//     relative Markdown link, anchor and repository path a page names
//     resolves;
//   - the package table of design.md names every package, its one job and
//     exactly what it may import, and only commands call os.Exit or
//     log.Fatal.
//
// The tests read files only; they need no network, no root and no build of
// the rest of the module.
package docs
