module github.com/egressd/egressd

go 1.26.8
