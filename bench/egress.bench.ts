/**
 * Egress benchmark. Prints one JSON object on stdout: what the egress mediator (`--egress broker`, the
 * default) costs a guest, against the same guest image with `--egress off` (QEMU's own user-mode NAT),
 * both running at once, every figure taken inside the guest:
 *
 * - throughput: a 100 MiB HTTP download from a test host in a network namespace (busybox `wget -O
 *   /dev/null`), median of 3 per mode, and the same download read by a small static probe with 256 KiB
 *   reads (wget spends the guest's CPU); target: mediated/off >= 0.8;
 * - connection set-up: p50 of 50 fresh TCP connections to the test host, each sending a small HTTP
 *   request (`connect()` returning, the first response byte, the closed response); target: <= 2 ms added;
 * - DNS: p50 of 50 A questions for a name the test DNS server answers, through the mediator (10.0.2.3)
 *   and, with `--egress off`, to the same test DNS server through QEMU's NAT (10.0.2.2:PORT is the
 *   host's loopback); target: <= 1 ms added.
 *
 * The guest's only clocksource is jiffies (4 ms steps: QEMU's TCG vCPUs' TSCs are marked unsynchronized,
 * and the clock loses ticks when the host is loaded), so everything is timed by the probe with `rdtsc`
 * (under TCG the host's TSC) at the frequency on the guest's command line (`tsc_early_khz`), which is
 * also checked against the guest clock over 2 s; `probe now` times wget. The same loops with busybox
 * (`nc`, `nslookup`, timed by `$EPOCHREALTIME`, a fork and exec each, `/bin/true` alike as a control)
 * are reported beside them, as means of the 4 ms steps.
 *
 * Needs root (network namespaces, taps, iptables) and a C compiler for the probe (musl-gcc or cc
 * -static). Bundle with esbuild (`--bundle --platform=node --packages=external`) and run with node.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { defaultImage } from "../src/layers/image/BuiltinImages.ts"
import { startDnsServer, startTestHost } from "../test/support/egressHosts.ts"
import { cleanup, loadAverage, log, median, must, percentile, stateDir } from "./lib.ts"

const downloadBytes = 100 * 1024 * 1024
const rounds = 3
const samples = 50
/**
 * RFC 2544's benchmarking range, public to the mediator; not the tests' 198.51.100.0/24, so that the
 * egress tests can run on the same host at the same time.
 */
const prefix = "198.18.0"
const name = "pub.test"

/** The probe run inside the guest: TCP set-up, DNS questions and a download, timed with rdtsc. */
const probeSource = String.raw`
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double khz;
static unsigned long long tsc(void) {
  unsigned lo, hi;
  __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
  return ((unsigned long long)hi << 32) | lo;
}
static double us(unsigned long long a, unsigned long long b) { return (double)(b - a) * 1000.0 / khz; }
static double cmdline_khz(void) {
  char line[4096] = "";
  FILE *f = fopen("/proc/cmdline", "r");
  if (f) {
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
  }
  char *p = strstr(line, "tsc_early_khz=");
  return p ? atof(p + 14) : 0;
}
static double measured_khz(void) {
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  unsigned long long t0 = tsc();
  sleep(2);
  clock_gettime(CLOCK_MONOTONIC, &b);
  unsigned long long t1 = tsc();
  return (double)(t1 - t0) / ((double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6);
}
static struct sockaddr_in address(const char *ip, const char *port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
  if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
    fprintf(stderr, "bad address %s\n", ip);
    exit(2);
  }
  return sa;
}
static void timeouts(int fd, int seconds) {
  struct timeval tv = {.tv_sec = seconds};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* tcp IP PORT N: per line, us to connect(), to the first response byte, to the response's end. */
static int tcp(struct sockaddr_in sa, int n) {
  static const char request[] = "GET / HTTP/1.0\r\n\r\n";
  static char response[16384];
  for (int i = 0; i < n; i++) {
    unsigned long long t0 = tsc();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    timeouts(fd, 10);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) return perror("connect"), 1;
    unsigned long long t1 = tsc();
    if (write(fd, request, sizeof request - 1) != (ssize_t)(sizeof request - 1)) return perror("write"), 1;
    size_t got = 0;
    unsigned long long t2 = 0;
    for (;;) {
      ssize_t r = read(fd, response + got, sizeof response - 1 - got);
      if (r < 0) return perror("read"), 1;
      if (r == 0) break;
      if (got == 0) t2 = tsc();
      got += (size_t)r;
      if (got == sizeof response - 1) break;
    }
    unsigned long long t3 = tsc();
    close(fd);
    response[got] = 0;
    if (strstr(response, "hello-from-test-host") == NULL) return fprintf(stderr, "bad response: %s\n", response), 1;
    printf("%.1f %.1f %.1f\n", us(t0, t1), us(t0, t2), us(t0, t3));
  }
  return 0;
}

/* dns IP PORT NAME N: per line, us from sending an A question (a new socket each) to its answer. */
static int dns(struct sockaddr_in sa, const char *name, int n) {
  unsigned char q[512], a[512];
  size_t len = 12;
  memset(q, 0, 12);
  q[2] = 1; /* RD */
  q[5] = 1; /* one question */
  for (const char *label = name; *label;) {
    const char *dot = strchr(label, '.');
    size_t l = dot ? (size_t)(dot - label) : strlen(label);
    q[len++] = (unsigned char)l;
    memcpy(q + len, label, l);
    len += l;
    label += l + (dot ? 1 : 0);
  }
  q[len++] = 0;
  q[len++] = 0, q[len++] = 1, q[len++] = 0, q[len++] = 1;
  for (int i = 0; i < n; i++) {
    q[0] = (unsigned char)(i >> 8), q[1] = (unsigned char)i;
    unsigned long long t0 = tsc();
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    timeouts(fd, 3);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) return perror("connect"), 1;
    if (send(fd, q, len, 0) != (ssize_t)len) return perror("send"), 1;
    ssize_t r;
    do r = recv(fd, a, sizeof a, 0);
    while (r >= 2 && (a[0] != q[0] || a[1] != q[1]));
    unsigned long long t1 = tsc();
    close(fd);
    if (r < 12) return fprintf(stderr, "no answer to question %d\n", i), 1;
    if ((a[3] & 15) != 0 || a[7] == 0) return fprintf(stderr, "rcode %d, %d answers\n", a[3] & 15, a[7]), 1;
    printf("%.1f\n", us(t0, t1));
  }
  return 0;
}

/* get IP PORT PATH: the body's bytes and us from connect() to the response's end (256 KiB reads). */
static int get(struct sockaddr_in sa, const char *path) {
  static char buf[262144];
  char request[512];
  int rl = snprintf(request, sizeof request, "GET %s HTTP/1.0\r\n\r\n", path);
  unsigned long long t0 = tsc();
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeouts(fd, 30);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) return perror("connect"), 1;
  if (write(fd, request, (size_t)rl) != rl) return perror("write"), 1;
  long long total = 0, header = -1;
  ssize_t r;
  while ((r = read(fd, buf, sizeof buf)) > 0) {
    if (header < 0) {
      buf[r < (ssize_t)sizeof buf ? r : r - 1] = 0;
      char *end = strstr(buf, "\r\n\r\n");
      if (end) header = (end + 4 - buf);
    }
    total += r;
  }
  unsigned long long t1 = tsc();
  if (r < 0) return perror("read"), 1;
  close(fd);
  printf("%lld %.1f\n", total - (header < 0 ? 0 : header), us(t0, t1));
  return 0;
}

int main(int argc, char **argv) {
  khz = cmdline_khz();
  if (argc >= 2 && strcmp(argv[1], "khz") == 0) return printf("%.0f %.0f\n", khz, measured_khz()), 0;
  if (khz <= 0) khz = measured_khz();
  if (argc == 2 && strcmp(argv[1], "now") == 0) return printf("%.1f\n", (double)tsc() * 1000.0 / khz), 0;
  if (argc == 5 && strcmp(argv[1], "tcp") == 0) return tcp(address(argv[2], argv[3]), atoi(argv[4]));
  if (argc == 6 && strcmp(argv[1], "dns") == 0) return dns(address(argv[2], argv[3]), argv[4], atoi(argv[5]));
  if (argc == 5 && strcmp(argv[1], "get") == 0) return get(address(argv[2], argv[3]), argv[4]);
  fprintf(stderr, "usage: probe khz | now | tcp IP PORT N | dns IP PORT NAME N | get IP PORT PATH\n");
  return 2;
}
`

const compileProbe = (directory: string) => {
  const source = NodePath.join(directory, "probe.c")
  const output = NodePath.join(directory, "probe")
  NodeFs.writeFileSync(source, probeSource)
  const compilers = [["musl-gcc", "-static", "-O2"], ["cc", "-static", "-O2"]]
  for (const [compiler, ...flags] of compilers) {
    const built = NodeChild.spawnSync(compiler!, [...flags, "-o", output, source], { encoding: "utf8" })
    if (built.status === 0) return output
    if (built.error === undefined) throw new Error(`${compiler} failed: ${built.stderr}`)
  }
  throw new Error("the egress bench needs a C compiler for its probe (musl-gcc or cc with a static libc)")
}

/** A process's CPU seconds, its reaped children's included. */
const cpuSeconds = (pid: number) => {
  const fields = NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100
}

const mediatorPid = (state: string, workspace: string) => {
  for (const pid of NodeFs.readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const argv = NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")
      if (
        argv[0]!.endsWith("microagent-egress") && argv.includes(workspace)
        && argv.some((a) => a.startsWith(state))
      ) return Number(pid)
    } catch {
      // Gone.
    }
  }
  throw new Error(`no mediator for ${workspace}`)
}

interface AuditRecord {
  readonly event: string
  readonly dst?: string
  readonly bytes_in?: number
}

const round2 = (x: number) => Number(x.toFixed(2))
const stats = (xs: ReadonlyArray<number>) => ({
  p50: round2(median(xs)),
  p90: round2(percentile(xs, 90)),
  min: round2(Math.min(...xs)),
  mean: round2(xs.reduce((a, b) => a + b, 0) / xs.length)
})
const lines = (out: string) => out.trim().split("\n").map((l) => l.trim().split(/\s+/).map(Number))

const main = async () => {
  if (process.getuid?.() !== 0) {
    throw new Error(
      "the egress bench needs root (network namespaces, taps, iptables), as egress mediation does"
    )
  }
  if (process.arch !== "x64") throw new Error("the egress bench's probe times with rdtsc (x86-64 only)")
  const state = stateDir("egress")
  const dns = await startDnsServer({ [name]: `${prefix}.10` })
  const host = await startTestHost(`ma-egress-bench-${process.pid}`, { prefix })
  const env = { MICROAGENT_EGRESS_DNS_UPSTREAM: `127.0.0.1:${dns.port}` }
  const notes: Array<string> = []
  const loadBefore = loadAverage()
  try {
    const probe = compileProbe(state)
    const sh = async (workspace: string, script: string) => {
      const result = JSON.parse(
        (await must(state, ["exec", workspace, "--json", "--", "sh", "-c", script], env)).stdout
      ).result
      if (result.exitCode !== 0) {
        throw new Error(`${workspace}: \`${script}\` exited ${result.exitCode}: ${result.stderr}`)
      }
      return result.stdout as string
    }
    const modes = [
      { workspace: "mediated", flags: [] as Array<string>, resolver: "10.0.2.3", resolverPort: 53 },
      { workspace: "off", flags: ["--egress", "off"], resolver: "10.0.2.2", resolverPort: dns.port }
    ] as const
    const vmm: Record<string, number> = {}
    for (const mode of modes) {
      log("egress", `creating and starting ${mode.workspace}`)
      await must(state, ["create", "--image", defaultImage, ...mode.flags, mode.workspace], env)
      await must(state, ["start", mode.workspace], env)
      await must(state, ["cp", probe, `${mode.workspace}:/tmp/probe`], env)
      await sh(mode.workspace, "chmod 755 /tmp/probe")
      vmm[mode.workspace] =
        JSON.parse((await must(state, ["inspect", mode.workspace], env)).stdout).workspace.vm.pid
    }
    const mediator = mediatorPid(state, "mediated")
    const khz = lines(await sh("mediated", "/tmp/probe khz"))[0]!
    if (Math.abs(khz[1]! / khz[0]! - 1) > 0.05) {
      notes.push(
        `the probe's rdtsc ran at ${khz[1]} kHz against the guest clock, not the command line's ${khz[0]} kHz`
      )
    }

    // Throughput, the modes alternated (the first in each round swapped) so that the load drifts evenly.
    const url = `http://${prefix}.10:8080/bytes/${downloadBytes}`
    const wget: Record<string, Array<number>> = { mediated: [], off: [] }
    const raw: Record<string, Array<number>> = { mediated: [], off: [] }
    const cpu: Record<string, Array<{ vmm: number; mediator?: number }>> = { mediated: [], off: [] }
    for (let round = 0; round < rounds; round++) {
      for (const mode of round % 2 === 0 ? modes : [...modes].reverse()) {
        log("egress", `round ${round}: ${mode.workspace} downloads`)
        const before = { vmm: cpuSeconds(vmm[mode.workspace]!), mediator: cpuSeconds(mediator) }
        const [started, ended] = lines(
          await sh(
            mode.workspace,
            `s=$(/tmp/probe now); wget -q -O /dev/null ${url} || exit 1; echo $s $(/tmp/probe now)`
          )
        )[0]!
        await new Promise((r) => setTimeout(r, 300))
        cpu[mode.workspace]!.push({
          vmm: round2(cpuSeconds(vmm[mode.workspace]!) - before.vmm),
          ...(mode.workspace === "mediated"
            ? { mediator: round2(cpuSeconds(mediator) - before.mediator) }
            : {})
        })
        wget[mode.workspace]!.push(downloadBytes / (ended! - started!))
        const [bytes, micros] = lines(
          await sh(mode.workspace, `/tmp/probe get ${prefix}.10 8080 /bytes/${downloadBytes}`)
        )[0]!
        if (bytes !== downloadBytes) throw new Error(`${mode.workspace}'s probe got ${bytes} bytes`)
        raw[mode.workspace]!.push(downloadBytes / micros!)
      }
    }

    // Connection set-up and DNS: a few warm-up samples (ARP, the first flow's state), then the samples
    // in 5 slices, the modes alternated as above.
    const tcp: Record<string, Array<Array<number>>> = { mediated: [], off: [] }
    const lookup: Record<string, Array<number>> = { mediated: [], off: [] }
    const nc: Record<string, Array<number>> = { mediated: [], off: [] }
    const nslookup: Record<string, Array<number>> = { mediated: [], off: [] }
    /** `/bin/true` timed the same way: a fork and exec of busybox, nothing on the network. */
    const control: Record<string, Array<number>> = { mediated: [], off: [] }
    const asked: Record<string, number> = { mediated: 0, off: 0 }
    for (const mode of modes) {
      await sh(
        mode.workspace,
        `/tmp/probe tcp ${prefix}.10 8080 5 && /tmp/probe dns ${mode.resolver} ${mode.resolverPort} ${name} 5`
      )
    }
    const slices = 5
    const slice = samples / slices
    for (let round = 0; round < slices; round++) {
      log("egress", `slice ${round}: connections and DNS questions`)
      for (const mode of round % 2 === 0 ? modes : [...modes].reverse()) {
        tcp[mode.workspace]!.push(
          ...lines(await sh(mode.workspace, `/tmp/probe tcp ${prefix}.10 8080 ${slice}`))
        )
        const askedBefore = dns.asked.length
        lookup[mode.workspace]!.push(
          ...lines(
            await sh(mode.workspace, `/tmp/probe dns ${mode.resolver} ${mode.resolverPort} ${name} ${slice}`)
          ).map((l) => l[0]!)
        )
        asked[mode.workspace]! += dns.asked.length - askedBefore
        const server = mode.resolverPort === 53 ? mode.resolver : `${mode.resolver}:${mode.resolverPort}`
        const loops = lines(
          await sh(
            mode.workspace,
            `for i in $(seq ${slice}); do s=$EPOCHREALTIME; nc -w 5 ${prefix}.10 8080 </dev/null >/dev/null || exit 1; `
              + `m=$EPOCHREALTIME; nslookup -type=a ${name} ${server} >/dev/null || exit 1; n=$EPOCHREALTIME; `
              + `/bin/true; echo $s $m $n $EPOCHREALTIME; done`
          )
        )
        nc[mode.workspace]!.push(...loops.map(([s, m]) => (m! - s!) * 1000))
        control[mode.workspace]!.push(...loops.map(([, , n, e]) => (e! - n!) * 1000))
        nslookup[mode.workspace]!.push(...loops.map(([, m, n]) => (n! - m!) * 1000))
      }
    }
    for (const mode of modes) {
      if (asked[mode.workspace]! !== samples) {
        notes.push(
          `${mode.workspace}: ${
            asked[mode.workspace]
          } of ${samples} probe questions reached the test DNS server`
        )
      }
    }

    // The mediated downloads went through the mediator: each is an audited flow of the whole body.
    const records: Array<AuditRecord> =
      JSON.parse((await must(state, ["egress", "mediated", "--json"], env)).stdout).records
    const downloadsAudited = records.filter((r) =>
      r.event === "egress_close" && r.dst === `${prefix}.10:8080` && (r.bytes_in ?? 0) > downloadBytes
    ).length
    if (downloadsAudited !== 2 * rounds) {
      throw new Error(`${downloadsAudited} mediated downloads audited, not ${2 * rounds}`)
    }

    const throughput = (xs: ReadonlyArray<number>) => ({
      median: round2(median(xs)),
      samples: xs.map(round2)
    })
    const wgetRatio = round2(median(wget.mediated!) / median(wget.off!))
    const rawRatio = round2(median(raw.mediated!) / median(raw.off!))
    const column = (workspace: string, i: number) =>
      stats(tcp[workspace]!.map((l) => l[i]! / 1000))
    const firstByte = { mediated: column("mediated", 1), off: column("off", 1) }
    const connect = { mediated: column("mediated", 0), off: column("off", 0) }
    const closed = { mediated: column("mediated", 2), off: column("off", 2) }
    const dnsMs = {
      mediated: stats(lookup.mediated!.map((x) => x / 1000)),
      off: stats(lookup.off!.map((x) => x / 1000))
    }
    const addedFirstByte = round2(firstByte.mediated.p50 - firstByte.off.p50)
    const addedDns = round2(dnsMs.mediated.p50 - dnsMs.off.p50)
    notes.push(
      "the guest's clock is jiffies (4 ms steps, losing ticks under load): the figures are timed by the probe's "
        + "rdtsc, wget's too; the busybox loops' figures (one fork and exec each; `/bin/true` timed alike as a control) are means of 4 ms steps",
      "with --egress off the DNS questions go to the same test DNS server through QEMU's NAT "
        + `(10.0.2.2:${dns.port}, the host's loopback); slirp's own resolver (10.0.2.3) forwards to the host's `
        + "resolver, which does not know the test name",
      "mediated connect() returns when the guest's SYN is accepted in the workspace's namespace (REDIRECT), "
        + "before the mediator dials upstream: the set-up target is taken on the first response byte"
    )
    process.stdout.write(
      `${
        JSON.stringify({
          downloadBytes,
          throughputMBps: {
            wget: { mediated: throughput(wget.mediated!), off: throughput(wget.off!), ratio: wgetRatio },
            probe: { mediated: throughput(raw.mediated!), off: throughput(raw.off!), ratio: rawRatio },
            target: 0.8
          },
          downloadCpuSeconds: cpu,
          downloadsAudited,
          connectionMs: {
            connect,
            firstByte,
            closed,
            addedP50: addedFirstByte,
            target: 2,
            busyboxNcMeanMs: { mediated: stats(nc.mediated!).mean, off: stats(nc.off!).mean }
          },
          dnsMs: {
            ...dnsMs,
            addedP50: addedDns,
            target: 1,
            busyboxNslookupMeanMs: {
              mediated: stats(nslookup.mediated!).mean,
              off: stats(nslookup.off!).mean
            }
          },
          busyboxTrueMeanMs: { mediated: stats(control.mediated!).mean, off: stats(control.off!).mean },
          withinTargets: {
            throughput: wgetRatio >= 0.8,
            connection: addedFirstByte <= 2,
            dns: addedDns <= 1
          },
          probeKhz: { commandLine: khz[0], measured: khz[1] },
          loadAverage: { before: loadBefore, after: loadAverage() },
          notes
        })
      }\n`
    )
  } finally {
    cleanup(state)
    host.close()
    dns.close()
  }
}

await main()
