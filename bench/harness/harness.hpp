// shmbus-bench: what the orchestrator and its worker processes share.
//
// Processes. The orchestrator (the process the user starts) never sends a message itself and never
// initialises a peer library: it plans groups of benchmarks, starts worker processes for each group
// (fork + exec of its own binary with `--worker`, so a worker starts with a clean image: no inherited
// iceoryx runtime, ZeroMQ context or shmbus client), and drives them through a Control block in a shared
// memfd. Each worker is pinned to one CPU. In a two-process group worker 0 is the leader (it sends and
// times) and worker 1 the follower (it echoes); in a queue group workers 0..P-1 produce and P..P+C-1
// consume. Workers leave with exit(), never _exit(), so iceoryx deregisters them from RouDi.
//
// A Bench is one (transport, mode, payload, pattern) instance inside a worker. The orchestrator sets it
// up in phases, with a barrier (all participants done) between phases:
//   0  receivers create what they receive on (the first receiver only, for an object all receivers share)
//   1  the other receivers of a shared object open it
//   2  senders open or connect what they send to
//   3  both sides finish (accept a connection, wait until a subscription is matched)
// then runs it (`run`), and tears it down in two phases (0: close every endpoint, 1: the creator removes
// names). Setup and run report failures as text; the orchestrator turns them into "skipped" rows.
//
// Memory ordering of the command protocol (Control/WorkerSlot, in a MAP_SHARED memfd):
//  R-CMD: the orchestrator writes cmd/bench/phase/count/arg, then cmd_seq.store(release) and FUTEX_WAKE.
//  A-CMD: the worker's cmd_seq.load(acquire) sees the new seq, then reads the fields.
//  R-DONE: the worker writes status/error/value[], then done_seq.store(release) and FUTEX_WAKE.
//  A-DONE: the orchestrator's done_seq.load(acquire), then reads the results and the sample regions.
//  started_seq (release/acquire) tells the orchestrator that a follower has entered its loop.
//  Queue consumers publish progress/last_tick with relaxed stores: the orchestrator only polls them,
//  and reads them exactly after A-DONE.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace shmbus::bench {

using u32 = std::uint32_t;
using u64 = std::uint64_t;

enum class Scenario : u32 { pingpong, throughput, fanout, queue, wakeup, reclaim };
// How a receiver waits and how a sender hands over the payload.
//  busy       spin on a non-blocking receive; copy the payload in and out
//  spin_park  shmbus receive() with SubscriberOptions.spin: spin, then park on the futex
//  blocking   the transport's blocking receive (futex, poll, condition variable); no spinning
//  copy       (throughput) busy receive, copy in and out
//  zero_copy  busy receive; the sender writes 8 bytes into a loaned chunk, the receiver reads in place
//  loans / samples  (reclaim) the killed client holds publisher loans / received samples
enum class Mode : u32 { busy, spin_park, blocking, copy, zero_copy, loans, samples };
// What a run does.
//  roundtrip  leader sends, follower echoes; one sample per round trip
//  stream     leader sends `count` messages one way, follower acknowledges the last; one sample: elapsed
//  fanout     leader publishes to N receivers in the follower, which echoes after the last one got it;
//             samples: round trip, and the leader's time inside send
//  queue      P producers, C competing consumers; the orchestrator times until all messages are taken
//  reclaim    a victim client holds chunks and is killed
enum class Pattern : u32 { roundtrip, stream, fanout, queue, reclaim };
enum class Role : u32 { leader, follower, producer, consumer, victim };

const char* to_string(Scenario s);
const char* to_string(Mode m);
bool parse_scenario(const std::string& s, Scenario* out);

inline constexpr int kMaxWorkers = 12;
inline constexpr int kMaxBenches = 48;
inline constexpr std::size_t kMaxSamples = 1u << 20;  // per sample region (8 MiB)
inline constexpr u64 kControlMagic = 0x48434e4542534253ULL;
inline constexpr u64 kPillSeq = ~0ULL;  // a queue message that tells a consumer to stop

struct BenchDesc {
  char transport[24];
  Mode mode;
  Pattern pattern;
  u64 payload;    // bytes in every message
  u64 depth;      // ring / queue capacity
  u32 receivers;  // fan-out subscribers or queue consumers (1 otherwise)
  u32 senders;    // queue producers (1 otherwise)
  u32 spin;       // spin-park iterations
  u32 reserved;
  char name[96];  // unique prefix for every name the bench creates: [A-Za-z0-9._-]
};

enum class Cmd : u32 { none, setup, run, teardown, pill, quit };

struct alignas(128) WorkerSlot {
  std::atomic<u32> cmd_seq;  // futex word, orchestrator -> worker (R-CMD/A-CMD)
  u32 cmd;
  u32 bench;
  u32 phase;
  u64 count;
  u64 arg;
  std::uint8_t pad0[128 - 32];
  std::atomic<u32> done_seq;     // futex word, worker -> orchestrator (R-DONE/A-DONE)
  std::atomic<u32> started_seq;  // the worker entered run() for this seq
  std::int32_t status;           // 0 ok
  u32 reserved;
  u64 value[4];  // results: elapsed ticks, owner id, error counts
  char error[512];
  alignas(128) std::atomic<u64> progress;  // queue consumer: messages taken (relaxed)
  std::atomic<u64> last_tick;              // queue consumer: tick of its latest message (relaxed)
};

struct Control {
  u64 magic;
  double ns_per_tick;  // of the TSC, calibrated by the orchestrator
  u32 use_tsc;
  u32 nworkers;
  char rundir[200];                  // files, FIFOs and sockets of this run
  alignas(128) std::atomic<u32> go;  // queue start gate (futex word)
  alignas(128) BenchDesc benches[kMaxBenches];
  WorkerSlot w[kMaxWorkers];
};

inline constexpr std::size_t kControlBytes = (sizeof(Control) + 4095) / 4096 * 4096;
inline constexpr std::size_t kRegionBytes = kControlBytes + 2 * kMaxSamples * sizeof(u64);

// What run() works with: the control block, this worker's slot, and (leader) the sample regions.
struct RunIo {
  Control* ctl;
  WorkerSlot* slot;
  u64* samples;   // region A: round trips (leader), or [0] = elapsed ticks (stream)
  u64* samples2;  // region B: the leader's time inside send (fanout)
};

// One benchmark instance inside a worker process.
class Bench {
 public:
  virtual ~Bench() = default;
  // Returns an empty string on success, else what failed.
  virtual std::string setup(int phase) = 0;
  virtual std::string run(u64 count, RunIo& io) = 0;
  // Queue producer: send `count` pills.
  virtual std::string pill(u64 /*count*/) { return {}; }
  virtual void teardown(int phase) = 0;
};

// Which role and index a worker plays in a bench of this pattern.
struct Part {
  Role role;
  int index;  // among the producers or consumers
  bool takes_part;
};
Part part_of(const BenchDesc& d, int worker);
int workers_for(const BenchDesc& d);

// Transport factories (one per file under transports/). `err` explains a nullptr.
std::unique_ptr<Bench> make_bench(const BenchDesc& d, Part part, const Control& ctl, std::string* err);

// "<what>: <strerror(errno)>".
std::string errno_text(const std::string& what);
// A failure on a worker's hot path: recorded in its slot for the orchestrator, then exit().
[[noreturn]] void fatal(const std::string& what);

// Worker process entry: `shmbus-bench --worker FD INDEX CPU`.
int worker_main(int fd, int index, int cpu);

// Names of the transports compiled into this binary, and why a transport is missing.
bool transport_compiled(const std::string& name, std::string* why_not);

}  // namespace shmbus::bench
