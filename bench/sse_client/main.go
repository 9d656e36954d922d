// sse_client: the load generator of bench/fanout.py. Opens N SSE streams (stream i follows
// job i mod J), prints "open N" once every stream got its first event, then writes one line
// "<stream> <seq> <unix ns>" per output event it receives to -out, until stdin closes.
// A 503 (the service shedding a burst of opens) is retried after its Retry-After, as a
// client must; the retries are counted. Stdlib only; -h2 multiplexes the streams over HTTP/2 without TLS (prior knowledge), as a
// browser multiplexes EventSource streams to one origin.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type received struct {
	stream int
	seq    string
	at     int64
}

func main() {
	url := flag.String("url", "", "service URL")
	key := flag.String("key", "", "API key")
	jobs := flag.String("jobs", "", "comma-separated job ids")
	streams := flag.Int("streams", 10000, "streams to open")
	h2 := flag.Bool("h2", false, "HTTP/2 without TLS (prior knowledge)")
	out := flag.String("out", "", "file for the received output events")
	flag.Parse()
	ids := strings.Split(*jobs, ",")

	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: *streams,
	}
	if *h2 {
		var protocols http.Protocols
		protocols.SetUnencryptedHTTP2(true)
		transport.Protocols = &protocols
		// HAProxy takes 100 streams a connection. Unbounded, the transport dialled a
		// connection for each request it could not place at once, and a burst of opens
		// shed and retried ran this process out of descriptors.
		transport.MaxConnsPerHost = *streams/50 + 10
	}
	client := &http.Client{Transport: transport}
	ctx, cancel := context.WithCancel(context.Background())

	events := make(chan received, 65536)
	var opened, failed, shed atomic.Int64
	var wg sync.WaitGroup
	openedAll := make(chan struct{})
	var once sync.Once
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := follow(ctx, client, *url, *key, ids[i%len(ids)], i, events, &shed, func() {
				if opened.Add(1) == int64(*streams) {
					once.Do(func() { close(openedAll) })
				}
			})
			if err != nil && ctx.Err() == nil {
				if failed.Add(1) <= 5 {
					fmt.Fprintf(os.Stderr, "stream %d: %v\n", i, err)
				}
			}
		}(i)
		if i%200 == 199 {
			time.Sleep(20 * time.Millisecond) // a steady ramp, not a SYN flood
		}
	}

	file, err := os.Create(*out)
	if err != nil {
		panic(err)
	}
	writer := bufio.NewWriterSize(file, 1<<20)
	written := make(chan struct{})
	go func() {
		for e := range events {
			fmt.Fprintf(writer, "%d %s %d\n", e.stream, e.seq, e.at)
		}
		writer.Flush()
		file.Close()
		close(written)
	}()
	go func() {
		<-openedAll
		fmt.Printf("open %d\n", opened.Load())
	}()
	go func() {
		for range time.Tick(5 * time.Second) {
			fmt.Fprintf(os.Stderr, "sse_client: %d open, %d failed, %d shed and retried\n",
				opened.Load(), failed.Load(), shed.Load())
		}
	}()
	io.Copy(io.Discard, os.Stdin) // until the bench closes stdin
	cancel()
	wg.Wait()
	close(events)
	<-written
	fmt.Printf("done opened=%d failed=%d shed=%d\n", opened.Load(), failed.Load(), shed.Load())
}

// follow reads one stream: calls ready at its first progress event, sends each output event's
// seq. A 503 is retried after its Retry-After (whole seconds; 1 when absent), counted in shed.
func follow(ctx context.Context, client *http.Client, url, key, job string, stream int,
	events chan<- received, shed *atomic.Int64, ready func()) error {
	var resp *http.Response
	for {
		req, err := http.NewRequestWithContext(ctx, "GET", url+"/api/v1/jobs/"+job+"/stream", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err = client.Do(req)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			break
		}
		resp.Body.Close()
		shed.Add(1)
		wait, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || wait < 1 {
			wait = 1
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(wait) * time.Second):
		}
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	reader := bufio.NewReaderSize(resp.Body, 4096)
	opened, seq := false, ""
	for {
		line, err := reader.ReadSlice('\n')
		if err != nil {
			return err
		}
		text := string(line)
		switch {
		case strings.HasPrefix(text, "id: "): // the id line comes first in our frames
			seq, _, _ = strings.Cut(strings.TrimPrefix(text, "id: "), "-")
			seq = strings.TrimSpace(seq)
		case text == "event: output\n":
			events <- received{stream, seq, time.Now().UnixNano()}
		case text == "event: progress\n" && !opened: // after status: the stream is live
			opened = true
			ready()
		case text == "\n":
			seq = ""
		}
	}
}
