// shmbus-soak: a long run of real processes against a real broker, with SIGKILLs, fault points and
// broker restarts, that ends in proofs rather than impressions.
//
//   shmbus-soak --minutes N [--seed S] [--producers P] [--consumers C] [--publishers N] [--subscribers N]
//               [--keep-logs]
//
// What runs: the `shmbus` broker (SHMBUS_BIN) and forked client workers, each a fresh process that
// connects after the fork (a Client runs a thread and must never be forked): producers and consumers of
// the queue "soak.q", publishers and subscribers of the stream "soak.s". For N minutes the parent, every
// 50-500 ms, SIGKILLs a random worker (respawned, sometimes armed with a random fault point), SIGKILLs the
// broker (restarted, sometimes with SHMBUS_FAULT set so that it may die at a fault point of its own), or
// stops the broker gracefully (SIGTERM or `shmbus stop`) and restarts it. Then it drains: the broker runs
// unarmed, producers stop, consumers empty the queue, everyone stops, the broker sweeps and stops.
//
// What it proves (exit 0), each violation printed with its detail otherwise (exit 1):
//  - The queue loses nothing and duplicates nothing unflagged. A ledger in MAP_SHARED memory, made
//    before any fork, has for every (producer slot p, sequence s) one 16-bit word: its state (attempted,
//    confirmed, failed, nacked), its deliveries and, of those, the flagged redeliveries. A producer
//    takes s from the ledger (a respawned producer continues its slot's sequence), marks it attempted,
//    publishes, and marks it confirmed or failed. A consumer checks the payload's checksum, counts the
//    delivery, then acks; 1% of deliveries are nacked instead (not counted; they must come back, flagged).
//    At the end: every confirmed or nacked message was delivered at least once (else LOST); no message
//    was delivered more than once plus its flagged redeliveries (else DUPLICATE); a publish that failed
//    was never delivered (GHOST). A message whose producer died mid-publish is in doubt: it may arrive
//    0 or 1 times (plus flagged redeliveries).
//  - Every chunk is back in its pool: ChunkPool::census() of both topics says all chunks free, none
//    queued or owned, no violation; no waiter record or subscriber slot is left behind, and the topics'
//    not_empty and space EventCounts count no sleeper (a leftover count makes every notify a syscall).
//    A free subscriber slot may keep the count of a subscriber killed while parked (the broker resets it
//    when it activates the slot again): that is printed, not failed.
//  - Broker RSS and segment use are flat: each broker incarnation's peak RSS stays within 1.5x + 2 MiB of
//    the first's, and the domain's segments in /dev/shm keep the count and sizes of the first sample.
// Streams are mostly load: subscribers check each publisher's order (a reorder or a torn message is a
// violation) and report gaps that missed() does not explain as warnings (a publisher killed mid fan-out
// reaches some subscribers and not others).
//
// Every wait has a deadline; a hang becomes a failure with a message. On exit every child is killed and
// the runtime directory and the domain's files in /dev/shm are removed.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "shmbus/detail/control.hpp"
#include "shmbus/fault.hpp"
#include "shmbus/shmbus.hpp"
#include "shmbus/topic.hpp"

#ifndef SHMBUS_BIN
#error "SHMBUS_BIN (path of the shmbus binary) must be defined"
#endif

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using shmbus::Client;
using shmbus::ClientOptions;

constexpr const char* kQueue = "soak.q";
constexpr const char* kStream = "soak.s";
constexpr std::uint32_t kMaxProducers = 8;
constexpr std::uint32_t kMaxWorkersPerRole = 8;
constexpr std::uint32_t kQueueMagic = 0x51414f53;   // "SOAQ"
constexpr std::uint32_t kStreamMagic = 0x53414f53;  // "SOAS"
constexpr std::size_t kWireHeader = 24;             // magic, who, seq, tag
constexpr std::size_t kMaxPayload = 64;             // the queue's max_size
constexpr std::size_t kStreamMaxPayload = 320;      // the stream's: above 104 bytes a message is a chunk

// Child exit codes (besides 0, a graceful stop).
constexpr int kExitNoConnect = 10;  // no broker accepted the connection within the deadline
constexpr int kExitNoPort = 11;     // the port (producer, consumer...) could not be opened in time

// The queue ledger: one 16-bit word per (producer slot, sequence number): four state bits (set with
// fetch_or), then the count of deliveries and the count of those flagged redelivered (6 bits each, raised
// with fetch_add; a message delivered 48 times is reported long before either count could overflow).
constexpr std::uint16_t kAttempted = 1;  // the producer is about to publish it
constexpr std::uint16_t kConfirmed = 2;  // publish() returned ok: it is in the queue
constexpr std::uint16_t kFailed = 4;     // publish() returned an error: it was not enqueued
constexpr std::uint16_t kNacked = 8;     // a consumer nacked it: it must come back, flagged
constexpr std::uint16_t kStateMask = 15;
constexpr std::uint16_t kDeliveryUnit = 1u << 4;
constexpr std::uint16_t kFlaggedUnit = 1u << 10;
constexpr std::uint32_t kMaxDeliveries = 48;  // more is a redelivery storm: counted, not recorded
std::uint32_t deliveries_of(std::uint16_t w) {
  return (w >> 4) & 63u;
}
std::uint32_t flagged_of(std::uint16_t w) {
  return (w >> 10) & 63u;
}
// The ledger's budget: 2^27 words (256 MiB) across the producer slots, used at a steady pace over the
// run (a producer ahead of its share waits), so that a long soak keeps producing to its last minute.
constexpr std::uint64_t kLedgerWords = 1ULL << 27;

// Counters the children keep in shared memory. The ones marked violation fail the run when non-zero.
enum Counter : std::uint32_t {
  kProduced,           // queue publishes confirmed
  kProduceFailed,      // queue publishes that returned an error (timed out: not enqueued)
  kConsumed,           // deliveries counted (acked)
  kConsumedFlagged,    // of those, flagged redelivered
  kNacks,              // deliveries nacked on purpose
  kQueueCorrupt,       // violation: a queue payload that fails its checksum
  kQueuePhantom,       // violation: a delivered message no producer attempted
  kNackUnflagged,      // violation: a nacked message delivered again without the redelivered flag
  kStreamPublished,    // stream publishes
  kStreamTimeouts,     // stream publishes that returned an error
  kStreamReceived,     // stream samples received
  kStreamMissed,       // the sum of Sample::missed()
  kStreamGaps,         // messages a subscriber skipped in a publisher's sequence
  kStreamUnexplained,  // warning: gaps beyond what missed() reported
  kStreamDisorder,     // violation: a publisher's sequence went backwards or repeated
  kStreamCorrupt,      // violation: a stream payload that fails its checksum
  kConnects,           // clients connected
  kConnectRetries,     // connect attempts that found no broker
  kPortRetries,        // port opens that failed (broker gone mid-call) and were retried
  kPacedMs,            // milliseconds producers waited for their share of the ledger (see ahead_of_share)
  kLedgerFull,         // waits of a producer whose ledger share is used up (only in the run's last moments)
  kRedeliveryStorm,    // violation: one message delivered more than kMaxDeliveries times
  kCounterCount
};
constexpr const char* kCounterNames[kCounterCount] = {"produced",
                                                      "produce_failed",
                                                      "consumed",
                                                      "consumed_flagged",
                                                      "nacks",
                                                      "queue_corrupt",
                                                      "queue_phantom",
                                                      "nack_unflagged",
                                                      "stream_published",
                                                      "stream_timeouts",
                                                      "stream_received",
                                                      "stream_missed",
                                                      "stream_gaps",
                                                      "stream_unexplained_gaps",
                                                      "stream_disorder",
                                                      "stream_corrupt",
                                                      "connects",
                                                      "connect_retries",
                                                      "port_retries",
                                                      "paced_ms",
                                                      "ledger_full",
                                                      "redelivery_storm"};
constexpr Counter kChildViolations[] = {kQueueCorrupt,   kQueuePhantom,  kNackUnflagged,
                                        kStreamDisorder, kStreamCorrupt, kRedeliveryStorm};

constexpr std::uint32_t kLogEntries = 64;
constexpr std::size_t kLogLen = 240;

// Shared by the parent and every child (MAP_SHARED | MAP_ANONYMOUS, made before the first fork).
struct SharedState {
  std::atomic<std::uint32_t> stop_producers{0};
  std::atomic<std::uint32_t> stop_all{0};
  std::atomic<std::uint32_t> next_instance{0};           // stream publisher instances, from 1
  std::atomic<std::uint64_t> next_seq[kMaxProducers]{};  // per producer slot: the next sequence number
  std::atomic<std::uint64_t> counters[kCounterCount]{};
  std::atomic<std::int64_t> run_start_ns{0};  // steady clock; the producers pace their ledger use over
  std::atomic<std::int64_t> run_ns{1};        // [run_start, run_start + run_ns]
  std::atomic<std::uint32_t> log_count{0};
  char log[kLogEntries][kLogLen];
};

struct Env {
  SharedState* sh = nullptr;
  std::uint16_t* words = nullptr;  // [producers][cap]
  std::uint64_t cap = 0;
  std::uint32_t producers = 0;
  std::uint64_t seed = 0;
};
Env g_env;

void bump(Counter c, std::uint64_t n = 1) {
  g_env.sh->counters[c].fetch_add(n, std::memory_order_relaxed);  // relaxed: read after the children exit
}
std::uint64_t counter(Counter c) {
  return g_env.sh->counters[c].load(std::memory_order_relaxed);
}
std::atomic_ref<std::uint16_t> word_of(std::uint32_t p, std::uint64_t s) {
  return std::atomic_ref<std::uint16_t>(g_env.words[p * g_env.cap + s]);
}

// A line for the final report, from any process (the first kLogEntries are kept).
__attribute__((format(printf, 1, 2))) void note(const char* fmt, ...) {
  const std::uint32_t i = g_env.sh->log_count.fetch_add(1, std::memory_order_relaxed);
  if (i >= kLogEntries) return;
  std::va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_env.sh->log[i], kLogLen, fmt, ap);
  va_end(ap);
}

// ---- payloads ----

std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

struct Wire {
  std::uint32_t magic;
  std::uint32_t who;  // queue: the producer slot; stream: the publisher instance
  std::uint64_t seq;
  std::uint64_t tag;  // a checksum of the rest, the length and the run's seed
};
static_assert(sizeof(Wire) == kWireHeader);

std::uint64_t tag_of(std::uint32_t magic, std::uint32_t who, std::uint64_t seq, std::size_t len) {
  return mix(g_env.seed ^ mix((static_cast<std::uint64_t>(who) << 32 | magic) ^ mix(seq ^ (len << 56))));
}

// Header, then filler bytes derived from the tag: a torn or mixed-up message fails decode().
void encode(std::byte* out, std::size_t len, std::uint32_t magic, std::uint32_t who, std::uint64_t seq) {
  const Wire w{magic, who, seq, tag_of(magic, who, seq, len)};
  std::memcpy(out, &w, sizeof w);
  for (std::size_t i = kWireHeader; i < len; ++i)
    out[i] = static_cast<std::byte>(static_cast<std::uint8_t>(w.tag >> ((i % 8) * 8)) ^
                                    static_cast<std::uint8_t>(i));
}

std::optional<Wire> decode(std::span<const std::byte> b, std::uint32_t magic) {
  if (b.size() < kWireHeader || b.size() > kStreamMaxPayload) return std::nullopt;
  Wire w;
  std::memcpy(&w, b.data(), sizeof w);
  if (w.magic != magic || w.tag != tag_of(magic, w.who, w.seq, b.size())) return std::nullopt;
  for (std::size_t i = kWireHeader; i < b.size(); ++i)
    if (b[i] != static_cast<std::byte>(static_cast<std::uint8_t>(w.tag >> ((i % 8) * 8)) ^
                                       static_cast<std::uint8_t>(i)))
      return std::nullopt;
  return w;
}

std::string hex(std::span<const std::byte> b) {
  std::string s;
  char buf[4];
  for (std::size_t i = 0; i < b.size() && i < 32; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned>(b[i]));
    s += buf;
  }
  return s;
}

// ---- the workers (children) ----

enum class Role : std::uint8_t { producer, consumer, publisher, subscriber };
constexpr const char* kRoleNames[] = {"producer", "consumer", "publisher", "subscriber"};

bool stopping(Role role) {
  if (g_env.sh->stop_all.load(std::memory_order_acquire) != 0) return true;
  return role == Role::producer && g_env.sh->stop_producers.load(std::memory_order_acquire) != 0;
}

std::optional<Client> connect_retry(Role role) {
  const auto end = Clock::now() + 60s;
  for (;;) {
    auto c = Client::connect(
        ClientOptions{.name = std::string("soak-") + kRoleNames[static_cast<int>(role)], .autostart = false});
    if (c) {
      bump(kConnects);
      return std::move(c).value();
    }
    bump(kConnectRetries);
    if (stopping(role)) return std::nullopt;
    if (Clock::now() > end) {
      note("%s pid %d: no broker accepted a connection within 60 s: %s", kRoleNames[static_cast<int>(role)],
           getpid(), c.error().message().c_str());
      std::_Exit(kExitNoConnect);
    }
    std::this_thread::sleep_for(20ms);
  }
}

// Open a port (the broker may be down or die mid-call: retry for up to 60 s).
template <typename F>
auto open_port(Role role, F&& open) -> std::optional<std::remove_cvref_t<decltype(open().value())>> {
  const auto end = Clock::now() + 60s;
  for (;;) {
    auto r = open();
    if (r) return std::move(r).value();
    bump(kPortRetries);
    if (stopping(role)) return std::nullopt;
    if (Clock::now() > end) {
      note("%s pid %d: could not open its port within 60 s: %s", kRoleNames[static_cast<int>(role)], getpid(),
           r.error().message().c_str());
      std::_Exit(kExitNoPort);
    }
    std::this_thread::sleep_for(20ms);
  }
}

// True when a producer slot at sequence s has used more of its ledger than the time elapsed grants it
// (plus some slack): it then waits, so that its share lasts the whole run.
bool ahead_of_share(std::uint64_t s) {
  const double elapsed =
      static_cast<double>(Clock::now().time_since_epoch().count() - g_env.sh->run_start_ns.load()) /
      static_cast<double>(g_env.sh->run_ns.load());
  const double share = std::clamp(elapsed, 0.0, 1.0) * static_cast<double>(g_env.cap) + 65536;
  if (s >= g_env.cap) return false;  // full: the caller reports it
  return static_cast<double>(s) > share;
}

int run_producer(std::uint32_t p, std::mt19937_64& rng) {
  auto client = connect_retry(Role::producer);
  if (!client) return 0;
  auto prod = open_port(Role::producer, [&] { return client->producer(kQueue); });
  if (!prod) return 0;
  std::byte buf[kMaxPayload];
  while (!stopping(Role::producer)) {
    // This process is the slot's only writer: the parent respawns a slot only after reaping it.
    const std::uint64_t s = g_env.sh->next_seq[p].load(std::memory_order_relaxed);
    if (ahead_of_share(s)) {
      bump(kPacedMs);
      std::this_thread::sleep_for(1ms);
      continue;
    }
    if (s >= g_env.cap) {  // the pace lets this happen only as the run ends
      bump(kLedgerFull);
      std::this_thread::sleep_for(10ms);
      continue;
    }
    // Advance first: a producer killed from here on leaves s in doubt, never reused.
    g_env.sh->next_seq[p].store(s + 1, std::memory_order_relaxed);
    // Release: a consumer that pops the message (after the queue's own release/acquire) sees the mark.
    word_of(p, s).fetch_or(kAttempted, std::memory_order_release);
    const std::size_t len = kWireHeader + rng() % (kMaxPayload - kWireHeader + 1);
    encode(buf, len, kQueueMagic, p, s);
    if (prod->publish(std::span<const std::byte>(buf, len), {}, 200ms)) {
      word_of(p, s).fetch_or(kConfirmed, std::memory_order_relaxed);
      bump(kProduced);
    } else {
      word_of(p, s).fetch_or(kFailed, std::memory_order_relaxed);
      bump(kProduceFailed);
    }
  }
  return 0;
}

int run_consumer(std::mt19937_64& rng) {
  auto client = connect_retry(Role::consumer);
  if (!client) return 0;
  auto cons = open_port(Role::consumer, [&] { return client->consumer(kQueue); });
  if (!cons) return 0;
  while (!stopping(Role::consumer)) {
    auto d = cons->receive(100ms);
    if (!d) continue;
    const bool flagged = d->redelivered();
    const auto w = decode(d->bytes(), kQueueMagic);
    if (!w || w->who >= g_env.producers || w->seq >= g_env.cap) {
      bump(kQueueCorrupt);
      note("consumer pid %d: corrupt queue payload (%zu bytes, seq %" PRIu64 ", redelivered %d): %s",
           getpid(), d->bytes().size(), d->seq(), flagged, hex(d->bytes()).c_str());
      d->ack();
      continue;
    }
    auto word = word_of(w->who, w->seq);
    const std::uint16_t st = word.load(std::memory_order_acquire);
    if ((st & kAttempted) == 0) {
      bump(kQueuePhantom);
      note("consumer pid %d: message (%u,%" PRIu64 ") delivered but never attempted (state %u)", getpid(),
           w->who, w->seq, st);
    }
    if ((st & kNacked) != 0 && !flagged) {
      bump(kNackUnflagged);
      note("consumer pid %d: message (%u,%" PRIu64 ") was nacked but came back without the redelivered flag",
           getpid(), w->who, w->seq);
    }
    if (rng() % 100 == 0) {
      // Marked before the nack: whoever receives it next must see the flag.
      word.fetch_or(kNacked, std::memory_order_relaxed);
      bump(kNacks);
      d->nack();
      continue;
    }
    if (deliveries_of(st) >= kMaxDeliveries) {
      if (counter(kRedeliveryStorm) == 0)
        note("consumer pid %d: message (%u,%" PRIu64 ") delivered over %u times", getpid(), w->who, w->seq,
             kMaxDeliveries);
      bump(kRedeliveryStorm);
    } else {
      word.fetch_add(kDeliveryUnit + (flagged ? kFlaggedUnit : 0), std::memory_order_relaxed);
    }
    bump(kConsumed);
    if (flagged) bump(kConsumedFlagged);
    d->ack();
  }
  return 0;
}

int run_publisher(std::mt19937_64& rng) {
  auto client = connect_retry(Role::publisher);
  if (!client) return 0;
  auto pub = open_port(Role::publisher, [&] { return client->publisher(kStream); });
  if (!pub) return 0;
  const std::uint32_t instance = g_env.sh->next_instance.fetch_add(1, std::memory_order_relaxed) + 1;
  std::byte buf[kStreamMaxPayload];
  for (std::uint64_t seq = 1; !stopping(Role::publisher); ++seq) {
    // Inline (up to 104 bytes) and chunk messages, about half each.
    const std::size_t len = kWireHeader + rng() % (kStreamMaxPayload - kWireHeader + 1);
    encode(buf, len, kStreamMagic, instance, seq);
    if (!pub->publish(std::span<const std::byte>(buf, len), {}, 200ms)) bump(kStreamTimeouts);
    bump(kStreamPublished);
    // The stream is load, not the subject: pace it (~20k/s) so that it leaves the queue some CPU.
    if (seq % 20 == 0) std::this_thread::sleep_for(1ms);
  }
  return 0;
}

int run_subscriber() {
  auto client = connect_retry(Role::subscriber);
  if (!client) return 0;
  auto sub = open_port(Role::subscriber, [&] { return client->subscriber(kStream); });
  if (!sub) return 0;
  struct Seen {
    std::uint64_t seq = 0;      // payload sequence
    std::uint64_t hdr_seq = 0;  // Sample::seq()
  };
  std::unordered_map<std::uint32_t, Seen> seen;  // by publisher instance
  std::uint64_t gaps = 0, missed = 0, reported = 0;
  // The last few samples stay held (zero-copy chunks among them), so that a SIGKILL finds some.
  std::deque<shmbus::Sample> held;
  while (!stopping(Role::subscriber)) {
    if (held.size() > 3) held.pop_front();
    auto s = sub->receive(100ms);
    if (!s) continue;
    bump(kStreamReceived);
    if (s->missed() != 0) {
      missed += s->missed();
      bump(kStreamMissed, s->missed());
    }
    const auto w = decode(s->bytes(), kStreamMagic);
    if (!w) {
      bump(kStreamCorrupt);
      note("subscriber pid %d: corrupt stream payload (%zu bytes, seq %" PRIu64 "): %s", getpid(),
           s->bytes().size(), s->seq(), hex(s->bytes()).c_str());
      continue;
    }
    auto [it, fresh] = seen.try_emplace(w->who);
    Seen& e = it->second;
    if (!fresh) {
      if (w->seq <= e.seq || s->seq() <= e.hdr_seq) {
        bump(kStreamDisorder);
        note("subscriber pid %d: publisher instance %u went from seq %" PRIu64 " (header %" PRIu64
             ") to %" PRIu64 " (header %" PRIu64 ")",
             getpid(), w->who, e.seq, e.hdr_seq, w->seq, s->seq());
      } else if (w->seq > e.seq + 1) {
        gaps += w->seq - e.seq - 1;
        bump(kStreamGaps, w->seq - e.seq - 1);
      }
    }
    e.seq = std::max(e.seq, w->seq);
    e.hdr_seq = std::max(e.hdr_seq, s->seq());
    const std::uint64_t unexplained = gaps > missed ? gaps - missed : 0;
    if (unexplained > reported) {
      bump(kStreamUnexplained, unexplained - reported);
      reported = unexplained;
    }
    held.push_back(std::move(*s));
  }
  return 0;
}

struct FaultArm {
  const char* point = nullptr;  // a string literal (fault::arm keeps the pointer)
  std::uint64_t nth = 0;
};

[[noreturn]] void worker_main(Role role, std::uint32_t slot, FaultArm arm, std::uint64_t rng_seed) {
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGALRM, SIG_DFL);
  if (arm.point != nullptr) shmbus::fault::arm(arm.point, arm.nth);
  std::mt19937_64 rng(rng_seed);
  int rc = 0;
  switch (role) {
    case Role::producer:
      rc = run_producer(slot, rng);
      break;
    case Role::consumer:
      rc = run_consumer(rng);
      break;
    case Role::publisher:
      rc = run_publisher(rng);
      break;
    case Role::subscriber:
      rc = run_subscriber();
      break;
  }
  // Ports and the client are gone (their thread joined) by now.
  std::_Exit(rc);
}

// ---- the parent ----

// The fault points a client passes on the data path. The mpmc.* points of the bare MpmcRing are not
// among them: the queue path moves chunks through ChunkPool's own stamped push and pop, which carry the
// pool.* points, so a client armed with an mpmc.* point would never die at it. The stream.* points are the
// connection protocol's (a publisher between writing a slot and publishing it, a subscriber between taking
// a chunk and handing it back).
constexpr const char* kClientFaults[] = {
    "pool.push.after_stamp", "pool.push.after_cas",         "pool.pop.before_claim",
    "pool.pop.after_claim",  "stream.pub.before_commit",    "stream.pub.before_closed",
    "stream.sub.after_held", "stream.sub.after_completion",
};
constexpr const char* kBrokerFaults[] = {
    "pool.push.after_stamp",
    "pool.push.after_cas",
    "pool.pop.before_claim",
    "pool.pop.after_claim",
    "pool.reclaim.after_take",
    "stream.attach_publisher.before_bump",
    "stream.attach_subscriber.before_bump",
    "stream.collect.after_take",
    "stream.return.after_take",
};

// For the SIGALRM watchdog and the signal handlers: every child's pid (async-signal-safe to walk).
constexpr int kMaxPids = 64;
volatile pid_t g_pids[kMaxPids];
volatile sig_atomic_t g_interrupted = 0;

void track_pid(pid_t pid) {
  for (auto& p : g_pids)
    if (p <= 0) {
      p = pid;
      return;
    }
}
void untrack_pid(pid_t pid) {
  for (auto& p : g_pids)
    if (p == pid) p = 0;
}

// The domain's files in /dev/shm, for the last-resort exits below (filled in once the topics exist).
constexpr int kMaxShmPaths = 4;
char g_shm_paths[kMaxShmPaths][128];

[[noreturn]] void die_now(const char* why) {
  (void)!write(2, why, std::strlen(why));
  for (auto& p : g_pids)
    if (p > 0) kill(p, SIGKILL);
  for (auto& path : g_shm_paths)
    if (path[0] != '\0') unlink(path);
  _exit(1);
}
void on_interrupt(int) {
  if (g_interrupted != 0) die_now("shmbus-soak: interrupted twice: killing every child\n");
  g_interrupted = 1;
}
void on_watchdog(int) {
  die_now("shmbus-soak: watchdog: the run overran its bound; killing every child\n");
}

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

struct Options {
  double minutes = 0;
  std::uint64_t seed = 0;
  bool seed_given = false;
  std::uint32_t producers = 2;
  std::uint32_t consumers = 2;
  std::uint32_t publishers = 1;
  std::uint32_t subscribers = 2;
  bool keep_logs = false;  // keep the runtime directory (broker logs) when the run fails
};

struct Worker {
  Role role;
  std::uint32_t slot;
  pid_t pid = -1;
  FaultArm arm;
  bool killed_by_us = false;
  bool retired = false;  // stopped for good (drain)
  Clock::time_point respawn_at{};
  std::uint32_t spawns = 0;
};

struct Incarnation {
  pid_t pid = -1;
  std::string fault;  // SHMBUS_FAULT it was started with, or empty
  std::uint64_t max_rss_kb = 0;
  std::uint32_t samples = 0;
  std::string end;  // how it ended
  std::string log;  // its stdout and stderr
};

// The last lines of a log, indented, for a violation's detail (the runtime directory is removed at exit).
std::string log_tail(const std::string& path, std::size_t lines = 6) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return " (no log)";
  std::vector<std::string> last;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f) != nullptr) {
    std::string l = buf;
    if (!l.empty() && l.back() == '\n') l.pop_back();
    last.push_back(std::move(l));
    if (last.size() > lines) last.erase(last.begin());
  }
  std::fclose(f);
  std::string out;
  for (const auto& l : last) out += "\n      | " + l;
  return out.empty() ? " (empty)" : out;
}

struct SegSample {
  std::uint64_t count = 0;
  std::uint64_t bytes = 0;      // st_size
  std::uint64_t allocated = 0;  // st_blocks * 512
  std::map<std::string, std::uint64_t> sizes;
};

class Soak {
 public:
  explicit Soak(Options o) : opt_(o), rng_(o.seed) {}
  int run();
  void cleanup(bool keep_runtime);

 private:
  // Setup.
  bool setup();
  bool create_topics();
  // Children.
  void spawn(Worker& w, bool allow_fault);
  void reap();
  bool wait_exit(pid_t pid, Clock::duration limit, int* status);
  // The broker.
  bool start_broker(bool allow_fault);
  void kill_broker();
  bool stop_broker_gracefully(bool use_command);
  bool broker_up() const { return broker_ > 0; }
  // The run.
  void act();
  void sample(bool segments);
  void progress(Clock::time_point start);
  bool drain();
  void check_ledger();
  void check_topics();
  void check_flatness();
  int report();
  void violation(std::string s) {
    std::fflush(stdout);
    std::fprintf(stderr, "VIOLATION: %s\n", s.c_str());
    violations_.push_back(std::move(s));
  }
  std::uint64_t uniform(std::uint64_t lo, std::uint64_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng_);
  }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  Options opt_;
  std::mt19937_64 rng_;
  std::string runtime_;
  std::string domain_;
  std::string sock_;
  std::uint64_t queue_id_ = 0;
  std::uint64_t stream_id_ = 0;
  void* map_ = nullptr;
  std::size_t map_len_ = 0;
  std::vector<Worker> workers_;
  std::map<pid_t, int> exited_;  // pids reaped that someone waits for by pid (broker, `shmbus stop`)
  pid_t broker_ = -1;
  bool broker_killed_by_us_ = false;
  bool broker_stopping_ = false;
  Clock::time_point broker_restart_at_{};
  bool broker_restart_due_ = false;
  std::vector<Incarnation> incarnations_;
  std::vector<SegSample> seg_samples_;
  std::vector<std::string> violations_;
  std::vector<std::string> warnings_;
  bool draining_ = false;
  // Counts of what happened.
  std::uint64_t worker_kills_ = 0, worker_fault_arms_ = 0, worker_fault_fires_ = 0, worker_spawns_ = 0;
  std::uint64_t broker_kills_ = 0, broker_fault_arms_ = 0, broker_fault_fires_ = 0, broker_starts_ = 0;
  std::uint64_t broker_sigterms_ = 0, broker_stop_commands_ = 0, broker_start_deaths_ = 0;
  std::map<std::string, std::uint64_t> fault_fires_by_point_;
  std::uint64_t kills_by_role_[4] = {0, 0, 0, 0};
};

bool Soak::setup() {
  char tmpl[] = "/tmp/shmbus-soak-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::perror("mkdtemp");
    return false;
  }
  runtime_ = tmpl;
  domain_ = "soak" + std::to_string(getpid());
  setenv("SHMBUS_RUNTIME_DIR", runtime_.c_str(), 1);
  setenv("SHMBUS_DOMAIN", domain_.c_str(), 1);
  setenv("SHMBUS_AUTOSTART", "0", 1);
  auto sp = shmbus::control::socket_path(domain_);
  if (!sp) {
    std::fprintf(stderr, "shmbus-soak: %s\n", sp.error().message().c_str());
    return false;
  }
  sock_ = *sp;

  // The ledger: sized for ~50k messages per second per producer over the run (bounded), of which only
  // the pages that are used cost memory.
  g_env.producers = opt_.producers;
  g_env.seed = opt_.seed;
  // Short runs need less: ~400k messages a second per producer (a 2-vCPU guest makes ~300k).
  g_env.cap =
      std::min<std::uint64_t>(kLedgerWords / g_env.producers, std::max(1.0, opt_.minutes * 60.0) * 400000.0);
  const std::size_t head = (sizeof(SharedState) + 4095) & ~std::size_t{4095};
  const std::size_t n = static_cast<std::size_t>(g_env.producers) * g_env.cap;
  map_len_ = head + n * sizeof(std::uint16_t);
  map_ = mmap(nullptr, map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map_ == MAP_FAILED) {
    std::perror("mmap of the ledger");
    map_ = nullptr;
    return false;
  }
  auto* base = static_cast<std::byte*>(map_);
  g_env.sh = new (base) SharedState();
  g_env.words = reinterpret_cast<std::uint16_t*>(base + head);
  return true;
}

// A short-lived child creates the topics: the parent never holds a Client (it forks all run long).
bool Soak::create_topics() {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    auto c = Client::connect(ClientOptions{.name = "soak-setup", .autostart = false});
    if (!c) {
      std::fprintf(stderr, "shmbus-soak: connect: %s\n", c.error().message().c_str());
      std::_Exit(2);
    }
    auto q =
        c->create_topic(kQueue, {.kind = shmbus::TopicKind::queue, .depth = 64, .max_size = kMaxPayload});
    auto s = c->create_topic(kStream, {.kind = shmbus::TopicKind::stream,
                                       .depth = 64,
                                       .max_size = kStreamMaxPayload,
                                       .overflow = shmbus::Overflow::drop_oldest,
                                       .max_subscribers = 8});
    if (!q || !s) {
      std::fprintf(stderr, "shmbus-soak: create_topic: %s\n", (!q ? q : s).error().message().c_str());
      std::_Exit(3);
    }
    std::_Exit(0);
  }
  track_pid(pid);
  int st = 0;
  if (!wait_exit(pid, 30s, &st) || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::fprintf(stderr, "shmbus-soak: could not create the topics (status %d)\n", st);
    return false;
  }
  auto dir = shmbus::DirectoryView::open(domain_);
  if (!dir) {
    std::fprintf(stderr, "shmbus-soak: the directory: %s\n", dir.error().message().c_str());
    return false;
  }
  auto q = dir->find(kQueue);
  auto s = dir->find(kStream);
  if (!q || !s) {
    std::fprintf(stderr, "shmbus-soak: the topics are not in the directory\n");
    return false;
  }
  queue_id_ = q->id;
  stream_id_ = s->id;
  const std::string prefix = "/dev/shm/shmbus." + domain_ + ".";
  const std::string paths[kMaxShmPaths] = {prefix + "dir", prefix + "lock",
                                           prefix + std::to_string(queue_id_),
                                           prefix + std::to_string(stream_id_)};
  for (int i = 0; i < kMaxShmPaths; ++i)
    std::snprintf(g_shm_paths[i], sizeof g_shm_paths[i], "%s", paths[i].c_str());
  return true;
}

void Soak::spawn(Worker& w, bool allow_fault) {
  FaultArm arm;
  if (allow_fault && !draining_ && chance(0.3)) {
    arm.point = kClientFaults[uniform(0, std::size(kClientFaults) - 1)];
    // Log-uniform in 1..65536: a worker passes each point up to ~100k times a second, so some die at
    // once, some after a second, some are killed first.
    arm.nth = static_cast<std::uint64_t>(std::exp2(std::uniform_real_distribution<double>(0, 16)(rng_)));
    ++worker_fault_arms_;
  }
  const std::uint64_t child_seed = mix(opt_.seed ^ (static_cast<std::uint64_t>(w.role) << 56) ^
                                       (static_cast<std::uint64_t>(w.slot) << 48) ^ w.spawns);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    violation(std::string("fork: ") + std::strerror(errno));
    w.respawn_at = Clock::now() + 100ms;
    return;
  }
  if (pid == 0) worker_main(w.role, w.slot, arm, child_seed);
  track_pid(pid);
  w.pid = pid;
  w.arm = arm;
  w.killed_by_us = false;
  ++w.spawns;
  ++worker_spawns_;
}

void Soak::reap() {
  for (;;) {
    int st = 0;
    const pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid <= 0) return;
    untrack_pid(pid);
    if (pid == broker_) {
      Incarnation& inc = incarnations_.back();
      broker_ = -1;
      if (broker_stopping_) {
        exited_[pid] = st;  // stop_broker_gracefully() judges it
      } else if (broker_killed_by_us_) {
        inc.end = "SIGKILL (soak)";
      } else if (!inc.fault.empty() && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
        inc.end = "fault " + inc.fault;
        ++broker_fault_fires_;
        ++fault_fires_by_point_["broker " + inc.fault.substr(0, inc.fault.find(':'))];
      } else {
        inc.end = WIFEXITED(st) ? "exit " + std::to_string(WEXITSTATUS(st))
                                : std::string("signal ") + strsignal(WTERMSIG(st));
        violation("broker pid " + std::to_string(pid) + " died unexpectedly: " + inc.end +
                  "; its log ends:" + log_tail(inc.log));
      }
      if (!broker_stopping_) {
        broker_restart_due_ = true;
        broker_restart_at_ = Clock::now() + std::chrono::milliseconds(uniform(0, 300));
      }
      continue;
    }
    Worker* w = nullptr;
    for (auto& x : workers_)
      if (x.pid == pid) w = &x;
    if (w == nullptr) {  // the setup child, `shmbus stop`: waited for by pid
      exited_[pid] = st;
      continue;
    }
    w->pid = -1;
    const char* role = kRoleNames[static_cast<int>(w->role)];
    if (w->killed_by_us) {
      ++worker_kills_;
      ++kills_by_role_[static_cast<int>(w->role)];
    } else if (w->arm.point != nullptr && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
      ++worker_fault_fires_;
      ++fault_fires_by_point_[std::string(role) + " " + w->arm.point];
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && (draining_ || stopping(w->role))) {
      w->retired = true;  // a graceful stop
    } else {
      const std::string how = WIFEXITED(st) ? "exit code " + std::to_string(WEXITSTATUS(st))
                                            : std::string("signal ") + strsignal(WTERMSIG(st));
      violation(std::string(role) + " " + std::to_string(w->slot) + " (pid " + std::to_string(pid) +
                ") died unexpectedly: " + how);
    }
    w->respawn_at = Clock::now() + std::chrono::milliseconds(uniform(0, 100));
  }
}

bool Soak::wait_exit(pid_t pid, Clock::duration limit, int* status) {
  const auto end = Clock::now() + limit;
  for (;;) {
    reap();
    if (auto it = exited_.find(pid); it != exited_.end()) {
      *status = it->second;
      exited_.erase(it);
      return true;
    }
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(2ms);
  }
}

bool Soak::start_broker(bool allow_fault) {
  broker_restart_due_ = false;
  Incarnation inc;
  if (allow_fault && !draining_ && chance(0.35)) {
    // Log-uniform in 1..32: the broker passes its points only when clients come, go or die.
    const auto nth =
        static_cast<std::uint64_t>(std::exp2(std::uniform_real_distribution<double>(0, 5)(rng_)));
    inc.fault =
        std::string(kBrokerFaults[uniform(0, std::size(kBrokerFaults) - 1)]) + ":" + std::to_string(nth);
    ++broker_fault_arms_;
  }
  const std::string log = runtime_ + "/broker-" + std::to_string(incarnations_.size()) + ".log";
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    violation(std::string("fork: ") + std::strerror(errno));
    return false;
  }
  if (pid == 0) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    if (!inc.fault.empty()) setenv("SHMBUS_FAULT", inc.fault.c_str(), 1);
    execl(SHMBUS_BIN, SHMBUS_BIN, "broker", "--domain", domain_.c_str(), "--log-level", "info",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  track_pid(pid);
  broker_ = pid;
  broker_killed_by_us_ = false;
  inc.pid = pid;
  inc.log = log;
  incarnations_.push_back(inc);
  ++broker_starts_;
  // Up when its socket accepts; it may die first (at its fault point, or for a real reason).
  const auto end = Clock::now() + 15s;
  for (;;) {
    reap();
    if (broker_ != pid) {
      ++broker_start_deaths_;
      return false;  // reap() judged the death and scheduled a restart
    }
    auto fd = shmbus::control::connect_socket(sock_);
    if (fd) {
      close(*fd);
      return true;
    }
    if (Clock::now() > end) {
      violation("broker pid " + std::to_string(pid) +
                " did not accept connections within 15 s; its log ends:" + log_tail(log));
      kill_broker();
      return false;
    }
    std::this_thread::sleep_for(5ms);
  }
}

void Soak::kill_broker() {
  if (!broker_up()) return;
  broker_killed_by_us_ = true;
  kill(broker_, SIGKILL);
  const pid_t pid = broker_;
  // reap() sees the broker's pid and schedules the restart; wait for it so the lock is free.
  const auto end = Clock::now() + 10s;
  while (broker_ == pid && Clock::now() < end) {
    reap();
    std::this_thread::sleep_for(1ms);
  }
  if (broker_ == pid) violation("broker pid " + std::to_string(pid) + " survived SIGKILL for 10 s");
}

// SIGTERM, or `shmbus stop`; then wait for the broker to exit. True when it stopped cleanly.
bool Soak::stop_broker_gracefully(bool use_command) {
  if (!broker_up()) return true;
  const pid_t pid = broker_;
  const std::string fault = incarnations_.back().fault;
  broker_stopping_ = true;
  std::string how;
  if (use_command) {
    ++broker_stop_commands_;
    how = "`shmbus stop`";
    std::fflush(nullptr);
    const pid_t cmd = fork();
    if (cmd == 0) {
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGALRM, SIG_DFL);
      const std::string log = runtime_ + "/stop.log";
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execl(SHMBUS_BIN, SHMBUS_BIN, "stop", "--domain", domain_.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    if (cmd > 0) {
      track_pid(cmd);
      int cst = 0;
      if (!wait_exit(cmd, 20s, &cst)) {
        kill(cmd, SIGKILL);
        violation("`shmbus stop` did not return within 20 s");
        (void)wait_exit(cmd, 5s, &cst);
      } else if (!(WIFEXITED(cst) && WEXITSTATUS(cst) == 0) && broker_ == pid) {
        // The broker may have died at its own fault point meanwhile; otherwise stop should have worked.
        warnings_.push_back("`shmbus stop` exited with status " + std::to_string(cst) + "; SIGTERM instead");
        kill(pid, SIGTERM);
      }
    }
  } else {
    ++broker_sigterms_;
    how = "SIGTERM";
    kill(pid, SIGTERM);
  }
  int st = 0;
  bool ok = true;
  if (!wait_exit(pid, 10s, &st)) {
    violation("broker pid " + std::to_string(pid) + " did not exit within 10 s of " + how);
    broker_stopping_ = false;
    kill_broker();
    ok = false;
  } else {
    broker_stopping_ = false;
    Incarnation& inc = incarnations_.back();
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      inc.end = "stopped (" + how + ")";
    } else if (!fault.empty() && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
      inc.end = "fault " + fault + " (while stopping)";
      ++broker_fault_fires_;
      ++fault_fires_by_point_["broker " + fault.substr(0, fault.find(':'))];
    } else {
      inc.end = WIFEXITED(st) ? "exit " + std::to_string(WEXITSTATUS(st))
                              : std::string("signal ") + strsignal(WTERMSIG(st));
      violation("broker pid " + std::to_string(pid) + " ended badly on " + how + ": " + inc.end +
                "; its log ends:" + log_tail(inc.log));
      ok = false;
    }
  }
  return ok;
}

void Soak::act() {
  std::vector<Worker*> alive;
  for (auto& w : workers_)
    if (w.pid > 0) alive.push_back(&w);
  const double r = std::uniform_real_distribution<double>(0, 1)(rng_);
  if (broker_up() && r < 0.10) {
    ++broker_kills_;
    kill_broker();
  } else if (broker_up() && r < 0.18) {
    (void)stop_broker_gracefully(chance(0.5));
    (void)start_broker(true);
  } else if (!alive.empty()) {
    Worker* w = alive[uniform(0, alive.size() - 1)];
    w->killed_by_us = true;
    kill(w->pid, SIGKILL);
  }
}

std::uint64_t rss_kb(pid_t pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (f == nullptr) return 0;
  char line[256];
  std::uint64_t kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::strncmp(line, "VmRSS:", 6) == 0) kb = std::strtoull(line + 6, nullptr, 10);
  std::fclose(f);
  return kb;
}

void Soak::sample(bool segments) {
  if (broker_up()) {
    const std::uint64_t kb = rss_kb(broker_);
    if (kb != 0) {
      Incarnation& inc = incarnations_.back();
      inc.max_rss_kb = std::max(inc.max_rss_kb, kb);
      ++inc.samples;
    }
  }
  if (!segments) return;
  SegSample s;
  const std::string prefix = "shmbus." + domain_ + ".";
  if (DIR* d = opendir("/dev/shm")) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind(prefix, 0) != 0 || name.ends_with(".lock")) continue;
      struct stat st {};
      if (stat(("/dev/shm/" + name).c_str(), &st) != 0) continue;
      ++s.count;
      s.bytes += static_cast<std::uint64_t>(st.st_size);
      s.allocated += static_cast<std::uint64_t>(st.st_blocks) * 512;
      s.sizes[name] = static_cast<std::uint64_t>(st.st_size);
    }
    closedir(d);
  }
  seg_samples_.push_back(std::move(s));
}

void Soak::progress(Clock::time_point start) {
  std::printf("[%6.1fs] produced %" PRIu64 " consumed %" PRIu64 " stream %" PRIu64 "/%" PRIu64
              " | worker kills %" PRIu64 " faults %" PRIu64 "/%" PRIu64 " | broker starts %" PRIu64
              " kills %" PRIu64 " faults %" PRIu64 " graceful %" PRIu64 "\n",
              seconds(Clock::now() - start), counter(kProduced), counter(kConsumed),
              counter(kStreamPublished), counter(kStreamReceived), worker_kills_, worker_fault_fires_,
              worker_fault_arms_, broker_starts_, broker_kills_, broker_fault_fires_,
              broker_sigterms_ + broker_stop_commands_);
  std::fflush(stdout);
}

std::uint64_t total_consumed_and_nacked() {
  return counter(kConsumed) + counter(kNacks);
}

bool Soak::drain() {
  draining_ = true;
  std::printf("drain: broker unarmed, producers stop, consumers empty the queue\n");
  // An armed broker could still die at its fault point: replace it with an unarmed one.
  if (broker_up() && !incarnations_.back().fault.empty()) (void)stop_broker_gracefully(false);
  for (int tries = 0; !broker_up() && tries < 5; ++tries) (void)start_broker(false);
  if (!broker_up()) {
    violation("drain: the broker would not start");
    return false;
  }
  auto keep_going = [&] {
    reap();
    if (!broker_up()) {  // an unarmed broker has no reason to die: that was reported; bring one back
      (void)start_broker(false);
    }
    for (auto& w : workers_)
      if (w.pid <= 0 && !w.retired && !stopping(w.role) && Clock::now() >= w.respawn_at) spawn(w, false);
  };
  g_env.sh->stop_producers.store(1, std::memory_order_release);
  {
    const auto end = Clock::now() + 30s;
    for (;;) {
      keep_going();
      bool any = false;
      for (auto& w : workers_)
        if (w.role == Role::producer && w.pid > 0) any = true;
      if (!any) break;
      if (Clock::now() > end) {
        violation("drain: producers did not stop within 30 s");
        for (auto& w : workers_)
          if (w.role == Role::producer && w.pid > 0) {
            w.killed_by_us = true;
            kill(w.pid, SIGKILL);
          }
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
  }
  auto queue = shmbus::TopicHandle::open(domain_, queue_id_);
  if (!queue) {
    violation("drain: cannot open the queue's segment: " + queue.error().message());
    return false;
  }
  {
    const auto end = Clock::now() + 60s;
    std::uint64_t last = total_consumed_and_nacked();
    auto stable_since = Clock::now();
    for (;;) {
      keep_going();
      const std::uint64_t now_count = total_consumed_and_nacked();
      if (now_count != last) {
        last = now_count;
        stable_since = Clock::now();
      }
      if (queue->queued_messages() == 0 && Clock::now() - stable_since >= 2s) break;
      if (Clock::now() > end) {
        violation("drain: the queue did not empty within 60 s (" + std::to_string(queue->queued_messages()) +
                  " queued)");
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
  }
  g_env.sh->stop_all.store(1, std::memory_order_release);
  {
    const auto end = Clock::now() + 30s;
    for (;;) {
      reap();
      std::vector<std::string> left;
      for (auto& w : workers_)
        if (w.pid > 0)
          left.push_back(std::string(kRoleNames[static_cast<int>(w.role)]) + " " + std::to_string(w.pid));
      if (left.empty()) break;
      if (Clock::now() > end) {
        std::string s;
        for (auto& l : left) s += " " + l;
        violation("drain: workers did not stop within 30 s:" + s);
        for (auto& w : workers_)
          if (w.pid > 0) {
            w.killed_by_us = true;
            kill(w.pid, SIGKILL);
          }
        const auto reaped_by = Clock::now() + 2s;
        while (Clock::now() < reaped_by) {
          reap();
          std::this_thread::sleep_for(5ms);
        }
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
  }
  // The broker's sweep (every second) returns what the last killed workers held.
  const auto end = Clock::now() + 3s;
  while (Clock::now() < end) {
    reap();
    sample(false);
    std::this_thread::sleep_for(50ms);
  }
  sample(true);
  if (!broker_up()) {
    violation("drain: the broker was not running at the end");
  } else if (!stop_broker_gracefully(false)) {
    return false;
  }
  return true;
}

void Soak::check_ledger() {
  std::uint64_t confirmed = 0, in_doubt = 0, in_doubt_delivered = 0, failed = 0, lost = 0, duplicated = 0,
                ghosts = 0, nacked_msgs = 0, deliveries = 0, flagged = 0, attempted = 0;
  std::uint32_t shown = 0;
  auto show = [&](const std::string& s) {
    if (shown++ < 20) violation(s);
  };
  for (std::uint32_t p = 0; p < g_env.producers; ++p) {
    const std::uint64_t n = g_env.sh->next_seq[p].load();
    for (std::uint64_t s = 0; s < n; ++s) {
      const std::uint16_t word = word_of(p, s).load();
      const std::uint32_t st = word & kStateMask, d = deliveries_of(word), r = flagged_of(word);
      deliveries += d;
      flagged += r;
      if ((st & kAttempted) != 0) ++attempted;
      if ((st & kNacked) != 0) ++nacked_msgs;
      const std::string id = "message (" + std::to_string(p) + "," + std::to_string(s) + ")";
      const std::string what = " [state " + std::to_string(st) + ", deliveries " + std::to_string(d) +
                               ", flagged " + std::to_string(r) + "]";
      if ((st & kConfirmed) != 0) {
        ++confirmed;
        if ((st & kFailed) != 0) show(id + ": both confirmed and failed" + what);
      } else if ((st & kFailed) != 0) {
        ++failed;
        if (d != 0) {
          ++ghosts;
          show("GHOST: " + id + ": its publish failed, yet it was delivered" + what);
        }
      } else {
        ++in_doubt;
        if (d != 0) ++in_doubt_delivered;
      }
      if (d == 0 && ((st & kConfirmed) != 0 || (st & kNacked) != 0)) {
        ++lost;
        show("LOST: " + id +
             ((st & kNacked) != 0 ? ": nacked, never delivered again" : ": confirmed, never delivered") +
             what);
      }
      if (d > 1 && d - 1 > r) {
        ++duplicated;
        show("DUPLICATE: " + id + ": delivered " + std::to_string(d) + " times, only " + std::to_string(r) +
             " flagged redelivered" + what);
      }
    }
  }
  if (shown > 20) violation("... and " + std::to_string(shown - 20) + " more ledger violations");
  std::printf("queue ledger:\n");
  std::printf("  attempted %" PRIu64 ", confirmed %" PRIu64 ", failed (not enqueued) %" PRIu64
              ", in doubt %" PRIu64 " (of which delivered %" PRIu64 ")\n",
              attempted, confirmed, failed, in_doubt, in_doubt_delivered);
  std::printf("  deliveries %" PRIu64 " (flagged redelivered %" PRIu64 "), nacks %" PRIu64
              " (messages nacked %" PRIu64 ")\n",
              deliveries, flagged, counter(kNacks), nacked_msgs);
  std::printf("  lost %" PRIu64 ", duplicated %" PRIu64 ", ghosts %" PRIu64 ", corrupt %" PRIu64
              ", phantom %" PRIu64 ", nack unflagged %" PRIu64 "\n",
              lost, duplicated, ghosts, counter(kQueueCorrupt), counter(kQueuePhantom),
              counter(kNackUnflagged));
  if (confirmed == 0 || deliveries == 0)
    violation("no queue message flowed (confirmed " + std::to_string(confirmed) + ", deliveries " +
              std::to_string(deliveries) + ")");
}

void Soak::check_topics() {
  std::printf("pools:\n");
  for (const auto& [name, id] :
       {std::pair<const char*, std::uint64_t>{kQueue, queue_id_}, {kStream, stream_id_}}) {
    auto t = shmbus::TopicHandle::open(domain_, id);
    if (!t) {
      violation(std::string("topic ") + name + ": cannot open its segment: " + t.error().message());
      continue;
    }
    const auto c = t->pool().census();
    const std::uint32_t chunks = t->pool().chunk_count();
    std::printf("  %s: %u chunks: free %" PRIu64 ", queued %" PRIu64 ", owned %" PRIu64 ", violations %zu\n",
                name, chunks, c.free, c.queued, c.owned, c.violations.size());
    for (std::size_t i = 0; i < c.violations.size() && i < 20; ++i)
      violation(std::string("census of ") + name + ": " + c.violations[i]);
    if (c.free != chunks)
      violation(std::string("topic ") + name + ": " + std::to_string(c.free) + " of " +
                std::to_string(chunks) + " chunks free at the end (queued " + std::to_string(c.queued) +
                ", owned " + std::to_string(c.owned) + ")");
    const shmbus::TopicShared* sh = t->shared();
    // Nothing may count as waiting: every dead waiter's record was forgotten by the broker. A count left
    // over means every notify on it makes a FUTEX_WAKE syscall from now on (eventcount.hpp, "Dead
    // waiters"). Topic-wide EventCounts count in the waiter records; futex_sleepers must stay 0.
    auto sleepers = [&](const char* what, const shmbus::EventCountShared& ec) {
      const std::uint32_t f = ec.futex_sleepers.load(), e = ec.fd_sleepers.load();
      if (f != 0 || e != 0)
        violation(std::string("topic ") + name + ": " + what + " counts " + std::to_string(f) +
                  " futex and " + std::to_string(e) +
                  " fd sleepers with no process running (a leaked count: each notify now "
                  "makes a FUTEX_WAKE syscall)");
    };
    sleepers("not_empty", sh->not_empty);
    sleepers("space", sh->space);
    // Validated by TopicHandle::open().
    const shmbus::WaiterRecord* records =
        sh->waiter_count == 0
            ? nullptr
            : t->segment().at(shmbus::Ref<shmbus::WaiterRecord>{sh->waiters_offset}, sh->waiter_count);
    std::uint32_t held_records = 0;
    for (std::uint32_t i = 0; i < sh->waiter_count; ++i) {
      const auto& w = records[i];
      const std::uint32_t ne = w.waiting[shmbus::kLaneNotEmpty].load();
      const std::uint32_t sp = w.waiting[shmbus::kLaneSpace].load();
      if (w.owner.load() != 0 || ne != 0 || sp != 0) {
        if (held_records++ < 5)
          violation(std::string("topic ") + name + ": waiter record " + std::to_string(i) +
                    " still held by pid " + std::to_string(shmbus::OwnerId{w.owner.load()}.pid()) +
                    " (not_empty " + std::to_string(ne) + ", space " + std::to_string(sp) + ")");
      }
    }
    if (held_records > 5)
      violation(std::string("topic ") + name + ": " + std::to_string(held_records) +
                " waiter records still held");
    if (t->kind() == shmbus::TopicKind::stream) {
      if (t->active_subscribers() != 0 || t->active_publishers() != 0)
        violation(std::string("topic ") + name + ": " + std::to_string(t->active_subscribers()) +
                  " subscriber and " + std::to_string(t->active_publishers()) +
                  " publisher slots still active");
      for (std::uint32_t k = 0; k < t->stream().conn_capacity; ++k) {
        const auto st = t->stream().conn(k)->state.load();
        if (st != shmbus::detail::kConnFree)
          violation(std::string("topic ") + name + ": connection " + std::to_string(k) + " left in state " +
                    std::to_string(st));
      }
      for (std::uint32_t i = 0; i < t->max_subscribers(); ++i) {
        const shmbus::SubscriberSlot* s = t->slot(i);
        if (s->owner.load() != 0 || s->state.load() != shmbus::kSlotFree)
          violation(std::string("topic ") + name + ": slot " + std::to_string(i) + " still owned by pid " +
                    std::to_string(shmbus::OwnerId{s->owner.load()}.pid()));
        // The broker zeroes a slot's EventCount once the slot's last owner is dead (TopicHandle::reclaim):
        // a count left on a free slot is a leaked waiter.
        if (s->ec.futex_sleepers.load() != 0 || s->ec.fd_sleepers.load() != 0)
          violation(std::string("topic ") + name + ": free slot " + std::to_string(i) + " keeps " +
                    std::to_string(s->ec.futex_sleepers.load()) + " futex / " +
                    std::to_string(s->ec.fd_sleepers.load()) + " fd sleeper count(s) of a dead subscriber");
      }
    }
    if (t->queued_messages() != 0)
      violation(std::string("topic ") + name + ": " + std::to_string(t->queued_messages()) +
                " messages still queued");
  }
}

void Soak::check_flatness() {
  std::map<std::string, int> ends;
  for (const auto& inc : incarnations_)
    ++ends[inc.end.empty() ? "running" : inc.end.rfind("fault", 0) == 0 ? "fault" : inc.end];
  std::printf("broker incarnations: %zu;", incarnations_.size());
  for (const auto& [how, n] : ends) std::printf(" %s: %d;", how.c_str(), n);
  std::printf("\n");
  const Incarnation* first = nullptr;
  std::uint64_t lo = UINT64_MAX, hi = 0;
  for (const auto& inc : incarnations_) {
    if (inc.samples == 0) continue;
    if (first == nullptr) first = &inc;
    lo = std::min(lo, inc.max_rss_kb);
    hi = std::max(hi, inc.max_rss_kb);
  }
  if (first == nullptr) {
    violation("no broker RSS sample was taken");
  } else {
    const std::uint64_t limit = first->max_rss_kb + first->max_rss_kb / 2 + 2048;
    std::printf("  broker peak RSS per incarnation: first %" PRIu64 " KiB, min %" PRIu64 " KiB, max %" PRIu64
                " KiB (limit %" PRIu64 " KiB)\n",
                first->max_rss_kb, lo, hi, limit);
    for (std::size_t i = 0; i < incarnations_.size(); ++i)
      if (incarnations_[i].max_rss_kb > limit)
        violation("broker incarnation " + std::to_string(i) + " (pid " +
                  std::to_string(incarnations_[i].pid) + ") peaked at " +
                  std::to_string(incarnations_[i].max_rss_kb) + " KiB RSS, over " + std::to_string(limit) +
                  " KiB");
  }
  if (seg_samples_.empty()) {
    violation("no segment sample was taken");
    return;
  }
  const SegSample& s0 = seg_samples_.front();
  std::uint64_t cmin = UINT64_MAX, cmax = 0, bmin = UINT64_MAX, bmax = 0, amin = UINT64_MAX, amax = 0;
  for (std::size_t i = 0; i < seg_samples_.size(); ++i) {
    const SegSample& s = seg_samples_[i];
    cmin = std::min(cmin, s.count);
    cmax = std::max(cmax, s.count);
    bmin = std::min(bmin, s.bytes);
    bmax = std::max(bmax, s.bytes);
    amin = std::min(amin, s.allocated);
    amax = std::max(amax, s.allocated);
    if (s.sizes != s0.sizes) {
      std::string a, b;
      for (auto& [n, z] : s0.sizes) a += " " + n + "=" + std::to_string(z);
      for (auto& [n, z] : s.sizes) b += " " + n + "=" + std::to_string(z);
      violation("segments changed between sample 0 and sample " + std::to_string(i) + ":" + a + " ->" + b);
      break;
    }
  }
  std::printf("  segments (%zu samples): count %" PRIu64 "..%" PRIu64 ", bytes %" PRIu64 "..%" PRIu64
              ", allocated %" PRIu64 "..%" PRIu64 "\n",
              seg_samples_.size(), cmin, cmax, bmin, bmax, amin, amax);
  if (amax > s0.allocated)
    violation("segment memory in use grew: from " + std::to_string(s0.allocated) + " to " +
              std::to_string(amax) + " bytes");
}

int Soak::run() {
  std::printf("shmbus-soak: %.2f minute(s), seed %" PRIu64
              ", %u producer(s), %u consumer(s), %u publisher(s), %u subscriber(s)\n",
              opt_.minutes, opt_.seed, opt_.producers, opt_.consumers, opt_.publishers, opt_.subscribers);
  if (!setup()) return 1;
  std::printf("domain %s, runtime %s, broker %s\n", domain_.c_str(), runtime_.c_str(), SHMBUS_BIN);
  std::fflush(stdout);
  if (!start_broker(false)) {
    std::fprintf(stderr, "shmbus-soak: the broker did not start\n");
    return 1;
  }
  if (!create_topics()) return 1;
  for (std::uint32_t i = 0; i < opt_.producers; ++i) workers_.push_back({.role = Role::producer, .slot = i});
  for (std::uint32_t i = 0; i < opt_.consumers; ++i) workers_.push_back({.role = Role::consumer, .slot = i});
  for (std::uint32_t i = 0; i < opt_.publishers; ++i)
    workers_.push_back({.role = Role::publisher, .slot = i});
  for (std::uint32_t i = 0; i < opt_.subscribers; ++i)
    workers_.push_back({.role = Role::subscriber, .slot = i});
  const auto start = Clock::now();
  const auto end =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.minutes * 60));
  g_env.sh->run_start_ns.store(start.time_since_epoch().count());
  g_env.sh->run_ns.store((end - start).count());
  for (auto& w : workers_) spawn(w, false);

  auto next_action = start + 1s;  // let everyone connect first
  auto next_rss = start;
  auto next_seg = start + 1s;
  auto next_progress = start + 10s;
  while (Clock::now() < end && g_interrupted == 0) {
    reap();
    const auto now = Clock::now();
    if (!broker_up() && broker_restart_due_ && now >= broker_restart_at_) (void)start_broker(true);
    for (auto& w : workers_)
      if (w.pid <= 0 && Clock::now() >= w.respawn_at) spawn(w, true);
    if (now >= next_action) {
      act();
      next_action = Clock::now() + std::chrono::milliseconds(uniform(50, 500));
    }
    if (now >= next_rss) {
      sample(now >= next_seg);
      if (now >= next_seg) next_seg = now + 5s;
      next_rss = now + 1s;
    }
    if (now >= next_progress) {
      progress(start);
      next_progress = now + 10s;
    }
    std::this_thread::sleep_for(5ms);
  }
  if (g_interrupted != 0) {
    violation("interrupted");
    return report();
  }
  progress(start);
  const bool drained = drain();
  check_ledger();
  if (drained) check_topics();  // only with the broker stopped: nothing may touch the pools meanwhile
  check_flatness();
  return report();
}

int Soak::report() {
  std::printf("summary (seed %" PRIu64 "):\n", opt_.seed);
  std::printf("  workers: %" PRIu64 " spawns, %" PRIu64 " SIGKILLs (producer %" PRIu64 ", consumer %" PRIu64
              ", publisher %" PRIu64 ", subscriber %" PRIu64 "), %" PRIu64
              " armed with a fault point, %" PRIu64 " died at it\n",
              worker_spawns_, worker_kills_, kills_by_role_[0], kills_by_role_[1], kills_by_role_[2],
              kills_by_role_[3], worker_fault_arms_, worker_fault_fires_);
  std::printf("  broker: %" PRIu64 " starts (%" PRIu64 " died starting), %" PRIu64 " SIGKILLs, %" PRIu64
              " graceful stops (%" PRIu64 " SIGTERM, %" PRIu64 " `shmbus stop`), %" PRIu64 " armed, %" PRIu64
              " died at a fault point\n",
              broker_starts_, broker_start_deaths_, broker_kills_, broker_sigterms_ + broker_stop_commands_,
              broker_sigterms_, broker_stop_commands_, broker_fault_arms_, broker_fault_fires_);
  if (!fault_fires_by_point_.empty()) {
    std::printf("  fault points fired:");
    for (const auto& [k, v] : fault_fires_by_point_) std::printf(" %s=%" PRIu64 ";", k.c_str(), v);
    std::printf("\n");
  }
  std::printf("  counters:");
  for (std::uint32_t i = 0; i < kCounterCount; ++i)
    std::printf(" %s=%" PRIu64, kCounterNames[i], counter(static_cast<Counter>(i)));
  std::printf("\n");
  for (Counter c : kChildViolations)
    if (counter(c) != 0) violation(std::string(kCounterNames[c]) + ": " + std::to_string(counter(c)));
  if (counter(kStreamUnexplained) != 0)
    warnings_.push_back(std::to_string(counter(kStreamUnexplained)) +
                        " stream gap(s) not explained by missed() (a publisher killed mid fan-out, or a drop "
                        "miscounted)");
  if (worker_kills_ == 0 || broker_kills_ == 0 || broker_sigterms_ + broker_stop_commands_ == 0)
    warnings_.push_back("some kind of fault never happened (run longer)");
  const std::uint32_t logged = g_env.sh->log_count.load();
  if (logged != 0) {
    std::printf("notes from the workers (%u):\n", logged);
    for (std::uint32_t i = 0; i < logged && i < kLogEntries; ++i) std::printf("  %s\n", g_env.sh->log[i]);
  }
  for (const auto& w : warnings_) std::printf("warning: %s\n", w.c_str());
  if (violations_.empty()) {
    std::printf("PASS\n");
    return 0;
  }
  std::printf("FAIL: %zu violation(s) (seed %" PRIu64 "):\n", violations_.size(), opt_.seed);
  for (const auto& v : violations_) std::printf("  %s\n", v.c_str());
  return 1;
}

void Soak::cleanup(bool keep_runtime) {
  for (auto& w : workers_)
    if (w.pid > 0) kill(w.pid, SIGKILL);
  if (broker_ > 0) kill(broker_, SIGKILL);
  for (auto& p : g_pids)
    if (p > 0) kill(p, SIGKILL);
  const auto end = Clock::now() + 10s;
  while (Clock::now() < end) {
    const pid_t pid = waitpid(-1, nullptr, WNOHANG);
    if (pid < 0) break;  // ECHILD: none left
    if (pid == 0) std::this_thread::sleep_for(2ms);
  }
  if (!domain_.empty()) {
    const std::string prefix = "shmbus." + domain_ + ".";
    if (DIR* d = opendir("/dev/shm")) {
      std::vector<std::string> names;
      while (dirent* e = readdir(d))
        if (std::string(e->d_name).rfind(prefix, 0) == 0) names.emplace_back(e->d_name);
      closedir(d);
      for (const auto& n : names) shm_unlink(("/" + n).c_str());
    }
  }
  if (keep_runtime) {
    std::printf("logs kept in %s\n", runtime_.c_str());
  } else if (!runtime_.empty() && runtime_.rfind("/tmp/shmbus-soak-", 0) == 0) {
    const std::string cmd = "rm -rf '" + runtime_ + "'";
    if (std::system(cmd.c_str()) != 0)
      std::fprintf(stderr, "shmbus-soak: could not remove %s\n", runtime_.c_str());
  }
  if (map_ != nullptr) munmap(map_, map_len_);
  map_ = nullptr;
}

void usage(FILE* out) {
  std::fprintf(
      out,
      "usage: shmbus-soak --minutes N [--seed S] [--producers P] [--consumers C] [--publishers N]\n"
      "                   [--subscribers N] [--keep-logs]\n"
      "Runs producers, consumers, publishers and subscribers as forked processes against a real\n"
      "broker for N minutes (fractions allowed), SIGKILLing them and the broker, arming fault points\n"
      "and restarting the broker; then drains and proves that no queue message was lost or duplicated\n"
      "unflagged, that every chunk is back in its pool and that broker RSS and segments stayed flat.\n"
      "Defaults: 2 producers (at most %u), 2 consumers, 1 publisher, 2 subscribers (at most %u each),\n"
      "a seed from the clock. --keep-logs keeps the runtime directory (broker logs) of a failed run.\n"
      "Exit status: 0 pass, 1 a violation (each printed with its detail), 64 bad usage.\n",
      kMaxProducers, kMaxWorkersPerRole);
}

}  // namespace

int main(int argc, char** argv) {
  // This process is the supervisor of the run: never armed itself (SHMBUS_FAULT is for the broker).
  shmbus::fault::disarm();
  unsetenv("SHMBUS_FAULT");
  Options opt;
  auto number = [&](int& i, const char* name) -> const char* {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "shmbus-soak: %s needs a value\n", name);
      std::exit(64);
    }
    return argv[++i];
  };
  auto count = [&](int& i, const char* name, std::uint32_t lo, std::uint32_t hi) {
    char* endp = nullptr;
    const char* v = number(i, name);
    const unsigned long n = std::strtoul(v, &endp, 10);
    if (*endp != '\0' || n < lo || n > hi) {
      std::fprintf(stderr, "shmbus-soak: %s must be %u..%u, not %s\n", name, lo, hi, v);
      std::exit(64);
    }
    return static_cast<std::uint32_t>(n);
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else if (a == "--minutes") {
      const char* v = number(i, "--minutes");
      char* endp = nullptr;
      opt.minutes = std::strtod(v, &endp);
      if (*endp != '\0' || !(opt.minutes > 0) || opt.minutes > 7 * 24 * 60) {
        std::fprintf(stderr, "shmbus-soak: --minutes must be a positive number, not %s\n", v);
        return 64;
      }
    } else if (a == "--seed") {
      const char* v = number(i, "--seed");
      char* endp = nullptr;
      opt.seed = std::strtoull(v, &endp, 0);
      if (*endp != '\0') {
        std::fprintf(stderr, "shmbus-soak: --seed must be a number, not %s\n", v);
        return 64;
      }
      opt.seed_given = true;
    } else if (a == "--keep-logs") {
      opt.keep_logs = true;
    } else if (a == "--producers") {
      opt.producers = count(i, "--producers", 1, kMaxProducers);
    } else if (a == "--consumers") {
      opt.consumers = count(i, "--consumers", 1, kMaxWorkersPerRole);
    } else if (a == "--publishers") {
      opt.publishers = count(i, "--publishers", 0, kMaxWorkersPerRole);
    } else if (a == "--subscribers") {
      opt.subscribers = count(i, "--subscribers", 0, kMaxWorkersPerRole);
    } else {
      std::fprintf(stderr, "shmbus-soak: unknown argument %s\n", a.c_str());
      usage(stderr);
      return 64;
    }
  }
  if (opt.minutes <= 0) {
    usage(stderr);
    return 64;
  }
  if (!opt.seed_given)
    opt.seed = mix(static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()) ^
                   (static_cast<std::uint64_t>(getpid()) << 32));

  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sa.sa_handler = on_watchdog;
  sigaction(SIGALRM, &sa, nullptr);
  // Bound: the run, plus the drain's own deadlines (~2.5 min at worst), plus slack.
  alarm(static_cast<unsigned>(opt.minutes * 60) + 600);

  Soak soak(opt);
  const int rc = soak.run();
  soak.cleanup(rc != 0 && opt.keep_logs);
  std::fflush(nullptr);
  return rc;
}
