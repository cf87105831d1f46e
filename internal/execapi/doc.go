// Package execapi is the execution API of `launcher serve`: an HTTP JSON
// API that runs one command per request in a sandbox and answers with its
// exit status, output and denied destinations (docs/serve.md).
//
//	request ──► decode (size cap, unknown fields refused)
//	        ──► settings (request:network.allow, ...) layered over the
//	            server's policy files like launch flags, floor checked
//	        ──► queue (concurrency cap, wait bounded, then 429)
//	        ──► Executor.Execute (cold: Create, Run, Close; later a pool)
//	        ──► JSON result, or NDJSON events as they happen
//
// Every text of a response that the sandbox could have influenced (its
// output, its denied destinations, error messages) has the request's
// secrets masked. The package declares the Executor it needs; Cold is the
// one that makes a fresh sandbox per execution.
package execapi
