// Command statusline fetches each URL with Go's net/http client (proxies
// from the environment, as every Go program does) and prints
// "go=<status or error>" per URL: what a Go tool shows a person when
// egressd refuses it. Built by the e2e suite and run inside a sandbox.
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	c := &http.Client{Timeout: 10 * time.Second}
	for _, u := range os.Args[1:] {
		resp, err := c.Get(u)
		if err != nil {
			fmt.Printf("go=%v\n", err)
			continue
		}
		resp.Body.Close()
		fmt.Printf("go=%s\n", resp.Status)
	}
}
