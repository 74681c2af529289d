// shmbus-pingpong: two-process round-trip latency of shmbus's rings, next to the floors they sit on.
//
// The leader (this process, pinned to CPU 0) forks a follower (pinned to CPU 1). Both map one segment. For
// each variant the leader sends a message and waits for the follower's echo; one sample is one round trip.
//
//   floor-cacheline   one atomic word alone on its line: leader writes 2i+1, follower answers 2i+2. Nothing
//                     can be faster than this with busy polling: it is one line going there and back.
//   spsc-seq 8B/64B   shmbus::SpscRing, one ring per direction; the consumer polls the slot's seq word.
//   spsc-idx 8B/64B   IndexRing below: the same slot layout, but the consumer polls a head index in the
//                     producer's line (rigtorp/SPSCQueue style, both sides caching the other's index).
//   futex             bare FUTEX_WAIT/FUTEX_WAKE ping-pong on two shared words: the floor for anything that
//                     sleeps.
//   eventcount        SpscRing 8B plus one shmbus::EventCount per direction, await(spin = 0): both sides park
//                     in the futex every time, as a subscriber that does not spin would.
//
// The decomposition of shmbus's data path (what a 64-byte message costs, layer by layer; the client API on
// top of it is measured by shmbus-bench):
//   pool-handoff 64B  ChunkPool alone: allocate from the free ring, copy 64 B in, push to message ring 1; the
//                     receiver pops, copies out and releases to the free ring. The owner-word hand-over of
//                     every step, without the topic layer.
//   stream 8B/64B     the stream data path as Publisher::publish(bytes) and Subscriber::try_receive()
//                     drive it, without the client wrappers: StreamPublisher writes the message inline into
//                     the connection's next 128-byte slot (header, sequence, statistics, the subscriber's
//                     wake word looked at after one fence); StreamSubscriber polls the slot's seq word,
//                     copies the message out and advances its tail. No clock reads.
//   stream-chunk 64B  the same with a loaned chunk (zero copy): loan from the publisher's cache, write
//                     8 bytes in place, publish the chunk's index; the receiver reads 8 bytes in place and
//                     gives the chunk back on the completion ring.
//
// This guest's core-to-core latency flips between two regimes (~120 ns and ~450 ns per round trip) within
// seconds, and the host takes CPU time away from its vCPUs for tens of milliseconds at a time (after a few
// seconds of both vCPUs busy, each may get only a third to a half of its CPU). A variant measured a minute
// after another is therefore not comparable with it. The variants run interleaved in rounds (A, B, C, ...,
// A, B, C, ...); the table quotes the median over rounds of each round's percentiles, the median over cycles
// of the ratio to the floor measured in the same cycle, and (cpu%) the median share of the CPU the leader
// got during its busy rounds. Throttled rounds inflate p99.9 and max, much less the medians.
//
// Timing: one timestamp per round trip (sample = difference of consecutive stamps), so each sample carries
// the cost of one timestamp, measured and printed at start (~20 ns here). The default clock is the TSC
// (lfence + rdtsc), calibrated against CLOCK_MONOTONIC_RAW before and after the run; --clock mono uses
// clock_gettime instead (~25 ns). On this guest both advance in steps of ~10 ns, so values are quantised to
// 10 ns. The busy variants spin without pause on both sides: each side owns its CPU.
//
// Usage: shmbus-pingpong [--iters N] [--round N] [--warmup N] [--variants a,b,..] [--cpus L,F]
//                        [--clock tsc|mono] [--csv FILE]
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/timing.hpp"
#include "shmbus/chunk_pool.hpp"
#include "shmbus/detail/stream_port.hpp"
#include "shmbus/detail/stream_supervisor.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/owner.hpp"
#include "shmbus/segment.hpp"
#include "shmbus/spsc_ring.hpp"
#include "shmbus/topic.hpp"

namespace {

using namespace shmbus::bench;
using shmbus::ChunkPool;
using shmbus::EventCount;
using shmbus::EventCountShared;
using shmbus::kCacheLine;
using shmbus::Ref;
using shmbus::RingStatus;
using shmbus::Segment;
using shmbus::SlotView;
using shmbus::SpscRing;
using shmbus::SpscSlotHeader;
using shmbus::TopicHandle;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "shmbus-pingpong: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T must(shmbus::Result<T> r) {
  if (!r) die(r.error().message());
  return std::move(*r);
}

// ---- IndexRing: the design SpscRing is compared against ------------------------------------------------
//
// A single-producer single-consumer ring over exactly SpscRing's slot layout (16-byte SpscSlotHeader, the
// payload after it, stride rounded up to 64; seq is left unused), synchronised the classic way: the producer
// publishes `head` in its own line and the consumer publishes `tail` in its own; each side caches the other's
// index and re-reads it only when its cache says empty (consumer) or full (producer). A message therefore
// crosses in two lines (the head line, then the slot), where SpscRing's crosses in the slot alone.
//
// Memory ordering:
//  R-I1 (try_push): head.store(release) after the slot's payload and size are written.
//  A-I1 (try_pop, when the cached head is used up): head.load(acquire), pairs with R-I1.
//  R-I2 (try_pop): tail.store(release) after the slot has been read.
//  A-I2 (try_push, when the cached tail says full): tail.load(acquire), pairs with R-I2.
struct IndexRingShared {
  std::uint64_t capacity;  // power of two
  std::uint64_t slot_size;
  std::uint64_t slot_stride;
  std::uint64_t slots_offset;
  std::uint8_t pad0[kCacheLine - 32];
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // producer line (R-I1/A-I1)
  std::uint8_t pad1[kCacheLine - 8];
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // consumer line (R-I2/A-I2)
  std::uint8_t pad2[kCacheLine - 8];
};
static_assert(sizeof(IndexRingShared) == 3 * kCacheLine);
static_assert(offsetof(IndexRingShared, head) == kCacheLine);
static_assert(offsetof(IndexRingShared, tail) == 2 * kCacheLine);

class IndexRing {
 public:
  static Ref<IndexRingShared> place(Segment& seg, std::uint64_t capacity, std::uint64_t slot_size) {
    auto ref = must(seg.allocate<IndexRingShared>(1, kCacheLine));
    const std::uint64_t stride = (sizeof(SpscSlotHeader) + slot_size + 63) / 64 * 64;
    const std::uint64_t slots = must(seg.allocate_bytes(capacity * stride, kCacheLine));
    IndexRingShared* s = seg.at(ref);
    s->capacity = capacity;
    s->slot_size = slot_size;
    s->slot_stride = stride;
    s->slots_offset = slots;
    // Relaxed: the follower is forked after this; fork orders everything before it.
    s->head.store(0, std::memory_order_relaxed);
    s->tail.store(0, std::memory_order_relaxed);
    return ref;
  }
  static IndexRing attach(const Segment& seg, Ref<IndexRingShared> ref) {
    IndexRing r;
    r.s_ = seg.at(ref);
    r.slots_ = seg.base() + r.s_->slots_offset;
    r.mask_ = r.s_->capacity - 1;
    r.capacity_ = r.s_->capacity;
    r.stride_ = r.s_->slot_stride;
    r.slot_size_ = r.s_->slot_size;
    // Relaxed: each side resumes from the index it owns (both 0 here).
    r.head_ = r.s_->head.load(std::memory_order_relaxed);
    r.tail_ = r.s_->tail.load(std::memory_order_relaxed);
    r.cached_head_ = r.head_;
    r.cached_tail_ = r.tail_;
    return r;
  }

  RingStatus try_push(const void* data, std::size_t size) noexcept {
    if (size > slot_size_) return RingStatus::too_big;
    if (head_ - cached_tail_ >= capacity_) {
      cached_tail_ = s_->tail.load(std::memory_order_acquire);  // A-I2: pairs with R-I2 in try_pop().
      if (head_ - cached_tail_ >= capacity_) return RingStatus::full;
    }
    auto* h = header(head_);
    std::memcpy(payload(h), data, size);
    h->size = static_cast<std::uint32_t>(size);
    h->flags = 0;
    ++head_;
    s_->head.store(head_, std::memory_order_release);  // R-I1: pairs with A-I1 in try_pop().
    return RingStatus::ok;
  }
  RingStatus try_pop(void* out, std::size_t capacity, std::size_t* size) noexcept {
    if (tail_ == cached_head_) {
      cached_head_ = s_->head.load(std::memory_order_acquire);  // A-I1: pairs with R-I1 in try_push().
      if (tail_ == cached_head_) return RingStatus::empty;
    }
    const auto* h = header(tail_);
    const std::size_t n = h->size <= slot_size_ ? h->size : slot_size_;
    if (n > capacity) return RingStatus::too_big;
    std::memcpy(out, payload(h), n);
    *size = n;
    ++tail_;
    s_->tail.store(tail_, std::memory_order_release);  // R-I2: pairs with A-I2 in try_push().
    return RingStatus::ok;
  }

 private:
  SpscSlotHeader* header(std::uint64_t pos) const {
    return reinterpret_cast<SpscSlotHeader*>(slots_ + (pos & mask_) * stride_);
  }
  static std::byte* payload(SpscSlotHeader* h) {
    return reinterpret_cast<std::byte*>(h) + sizeof(SpscSlotHeader);
  }
  static const std::byte* payload(const SpscSlotHeader* h) {
    return reinterpret_cast<const std::byte*>(h) + sizeof(SpscSlotHeader);
  }

  IndexRingShared* s_ = nullptr;
  std::byte* slots_ = nullptr;
  std::uint64_t mask_ = 0, capacity_ = 0, stride_ = 0, slot_size_ = 0;
  std::uint64_t head_ = 0, cached_tail_ = 0;  // producer-local
  std::uint64_t tail_ = 0, cached_head_ = 0;  // consumer-local
};

// ---- the layers of shmbus's data path, as channels with try_push/try_pop ---------------------------------

// ChunkPool hand-off: the sender allocates, copies and pushes to message ring 1 (spinning while the free
// ring is empty or the message ring full); the receiver pops, copies out and releases.
struct PoolTx {
  ChunkPool* pool;
  RingStatus try_push(const void* data, std::size_t size) noexcept {
    std::uint32_t c;
    while (pool->try_allocate(c) != RingStatus::ok) {
    }
    std::memcpy(pool->data(c), data, size);
    pool->header(c).size.store(static_cast<std::uint32_t>(size), std::memory_order_relaxed);
    while (pool->try_push(1, c) != RingStatus::ok) {
    }
    return RingStatus::ok;
  }
};
struct PoolRx {
  ChunkPool* pool;
  RingStatus try_pop(void* out, std::size_t cap, std::size_t* n) noexcept {
    std::uint32_t c;
    if (pool->try_pop(1, c) != RingStatus::ok) return RingStatus::empty;
    const std::size_t size = pool->header(c).size.load(std::memory_order_relaxed);
    *n = size <= cap ? size : cap;
    std::memcpy(out, pool->data(c), *n);
    pool->release(c);
    return RingStatus::ok;
  }
};

// The stream data path as the client API drives it (client.cpp), without the Client wrappers.
struct StreamTx {
  shmbus::detail::StreamPublisher* p;
  bool chunk;
  RingStatus try_push(const void* data, std::size_t size) noexcept {
    if (!chunk) {
      if (p->publish(static_cast<const std::byte*>(data), size, {}, shmbus::Deadline::now()) !=
          shmbus::detail::SendStatus::ok)
        die("stream: publish failed");
      return RingStatus::ok;
    }
    std::uint32_t c;
    if (p->loan(c, shmbus::Deadline::after(std::chrono::seconds(1))) != shmbus::detail::SendStatus::ok)
      die("stream: no chunk");
    std::memcpy(p->topic().payload(c), data, 8);  // zero copy: the sender writes its 8 bytes in place
    if (p->publish_chunk(c, size, {}, shmbus::Deadline::now()) != shmbus::detail::SendStatus::ok)
      die("stream: publish failed");
    return RingStatus::ok;
  }
};
struct StreamRx {
  shmbus::detail::StreamSubscriber* s;
  shmbus::detail::Received r;
  RingStatus try_pop(void* out, std::size_t cap, std::size_t* n) noexcept {
    if (!s->try_receive(r)) return RingStatus::empty;
    if (r.is_chunk) {
      *n = r.size;  // zero copy: 8 bytes read in place
      std::memcpy(out, s->topic().payload(r.chunk), 8);
      s->release(r.conn, r.chunk);
    } else {
      *n = r.size <= cap ? r.size : cap;
      std::memcpy(out, r.bytes, *n);
    }
    return RingStatus::ok;
  }
};

// Made before the fork (their segments are unlinked at once; the mappings are inherited): the leader
// publishes on ping and subscribes to pong, the follower the other way round.
std::unique_ptr<shmbus::detail::StreamPublisher> g_pub_ping, g_pub_pong;
std::unique_ptr<shmbus::detail::StreamSubscriber> g_sub_ping, g_sub_pong;

// ---- variants -------------------------------------------------------------------------------------------

enum class Kind { floor_line, spsc_seq, spsc_idx, futex, eventcount, pool, stream, stream_chunk };

struct Variant {
  const char* name;
  Kind kind;
  std::size_t bytes;  // message size
  bool blocking;
};

constexpr std::array kVariants = {
    Variant{"floor-cacheline", Kind::floor_line, 8, false},
    Variant{"spsc-seq-in-slot 8B", Kind::spsc_seq, 8, false},
    Variant{"spsc-seq-in-slot 64B", Kind::spsc_seq, 64, false},
    Variant{"spsc-index 8B", Kind::spsc_idx, 8, false},
    Variant{"spsc-index 64B", Kind::spsc_idx, 64, false},
    Variant{"futex (floor)", Kind::futex, 4, true},
    Variant{"eventcount 8B", Kind::eventcount, 8, true},
    Variant{"pool-handoff 64B", Kind::pool, 64, false},
    Variant{"stream 8B", Kind::stream, 8, false},
    Variant{"stream 64B", Kind::stream, 64, false},
    Variant{"stream-chunk 64B", Kind::stream_chunk, 64, false},
};
constexpr std::size_t kFloorBusy = 0;      // index of floor-cacheline
constexpr std::size_t kFloorBlocking = 5;  // index of futex
constexpr std::uint64_t kRingCapacity = 1024;

// Everything both processes use, placed in one segment before the fork.
struct alignas(kCacheLine) Control {
  // Leader -> follower: a new command. R-C1: cmd_seq.store(release) after variant and count; A-C1: the
  // follower's acquire load of cmd_seq.
  std::atomic<std::uint32_t> cmd_seq;
  std::uint32_t variant;  // index into kVariants, or kQuit
  std::uint64_t count;    // round trips
};
struct alignas(kCacheLine) Ack {
  // Follower -> leader: done with command `done_seq` (R-C2 release / A-C2 acquire).
  std::atomic<std::uint32_t> done_seq;
};
struct alignas(kCacheLine) Word64 {
  std::atomic<std::uint64_t> v;
};
struct alignas(kCacheLine) Word32 {
  std::atomic<std::uint32_t> v;
};
constexpr std::uint32_t kQuit = 0xffffffffu;

struct Layout {
  Ref<Control> control;
  Ref<Ack> ack;
  Ref<Word64> line;                                      // floor-cacheline
  Ref<Word32> futex_ping, futex_pong;                    // futex floor
  Ref<shmbus::SpscRingShared> seq_ping[2], seq_pong[2];  // [0] 8 B, [1] 64 B
  Ref<IndexRingShared> idx_ping[2], idx_pong[2];
  Ref<shmbus::SpscRingShared> ec_ping, ec_pong;
  Ref<EventCountShared> ev_ping, ev_pong;
  Ref<shmbus::ChunkPoolShared> pool_ping, pool_pong;
};

// Process-local handles, attached after the fork by each side.
struct Handles {
  Control* control;
  Ack* ack;
  std::atomic<std::uint64_t>* line;
  std::atomic<std::uint32_t>* futex_ping;
  std::atomic<std::uint32_t>* futex_pong;
  SpscRing seq_ping[2], seq_pong[2];
  IndexRing idx_ping[2], idx_pong[2];
  SpscRing ec_ping, ec_pong;
  EventCount ev_ping, ev_pong;
  ChunkPool pool_ping, pool_pong;
};

Handles attach_all(const Segment& seg, const Layout& l) {
  Handles h;
  h.control = seg.at(l.control);
  h.ack = seg.at(l.ack);
  h.line = &seg.at(l.line)->v;
  h.futex_ping = &seg.at(l.futex_ping)->v;
  h.futex_pong = &seg.at(l.futex_pong)->v;
  for (int k = 0; k < 2; ++k) {
    h.seq_ping[k] = must(SpscRing::attach(seg, l.seq_ping[k]));
    h.seq_pong[k] = must(SpscRing::attach(seg, l.seq_pong[k]));
    h.idx_ping[k] = IndexRing::attach(seg, l.idx_ping[k]);
    h.idx_pong[k] = IndexRing::attach(seg, l.idx_pong[k]);
  }
  h.ec_ping = must(SpscRing::attach(seg, l.ec_ping));
  h.ec_pong = must(SpscRing::attach(seg, l.ec_pong));
  h.ev_ping = EventCount(seg.at(l.ev_ping));
  h.ev_pong = EventCount(seg.at(l.ev_pong));
  h.pool_ping = must(ChunkPool::attach(seg, l.pool_ping));
  h.pool_pong = must(ChunkPool::attach(seg, l.pool_pong));
  return h;
}

// ---- clock (bench/common/timing.hpp) ------------------------------------------------------------------

double g_ns_per_tick = 1.0;

// ---- the two sides of each variant ----------------------------------------------------------------------

struct Stats {
  std::uint64_t errors = 0;  // echoes that did not match
};

template <typename Ring>
RingStatus ring_pop(Ring& r, void* out, std::size_t cap, std::size_t* n) {
  return r.try_pop(out, cap, n);
}

template <typename Tx, typename Rx>
void leader_rings(Tx& tx, Rx& rx, std::size_t bytes, std::uint64_t count, std::uint64_t* samples, Stats& st) {
  alignas(64) std::byte msg[64] = {};
  alignas(64) std::byte back[64] = {};
  std::uint64_t prev = now_ticks();
  for (std::uint64_t i = 0; i < count; ++i) {
    std::memcpy(msg, &i, sizeof i);
    spin_until([&] { return tx.try_push(msg, bytes) == RingStatus::ok; });
    std::size_t n = 0;
    spin_until([&] { return ring_pop(rx, back, sizeof back, &n) == RingStatus::ok; });
    const std::uint64_t t = now_ticks();
    samples[i] = t - prev;
    prev = t;
    std::uint64_t echo;
    std::memcpy(&echo, back, sizeof echo);
    st.errors += (echo != i) | (n != bytes);
  }
}

template <typename Rx, typename Tx>
void follower_rings(Rx& rx, Tx& tx, std::uint64_t count) {
  alignas(64) std::byte buf[64];
  for (std::uint64_t i = 0; i < count; ++i) {
    std::size_t n = 0;
    spin_until([&] { return ring_pop(rx, buf, sizeof buf, &n) == RingStatus::ok; });
    spin_until([&] { return tx.try_push(buf, n) == RingStatus::ok; });
  }
}

// The word was reset to 0 by the leader before the round (published by R-C1).
void leader_line(std::atomic<std::uint64_t>& w, std::uint64_t count, std::uint64_t* samples) {
  std::uint64_t prev = now_ticks();
  for (std::uint64_t i = 0; i < count; ++i) {
    w.store(2 * i + 1, std::memory_order_release);
    while (w.load(std::memory_order_acquire) != 2 * i + 2) {
    }
    const std::uint64_t t = now_ticks();
    samples[i] = t - prev;
    prev = t;
  }
}

void follower_line(std::atomic<std::uint64_t>& w, std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) {
    while (w.load(std::memory_order_acquire) != 2 * i + 1) {
    }
    w.store(2 * i + 2, std::memory_order_release);
  }
}

constexpr auto kForever = std::chrono::nanoseconds(-1);

// Block in FUTEX_WAIT until the word reads `want`.
void futex_await(std::atomic<std::uint32_t>& w, std::uint32_t want) {
  for (;;) {
    const std::uint32_t v = w.load(std::memory_order_acquire);
    if (v == want) return;
    (void)shmbus::futex_wait(&w, v, kForever);  // returns at once with -EAGAIN if w moved on
  }
}

// Both words were reset to 0 by the leader before the round (published by R-C1).
void leader_futex(Handles& h, std::uint64_t count, std::uint64_t* samples) {
  std::uint64_t prev = now_ticks();
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto v = static_cast<std::uint32_t>(i + 1);
    h.futex_ping->store(v, std::memory_order_release);
    (void)shmbus::futex_wake(h.futex_ping, 1);
    futex_await(*h.futex_pong, v);
    const std::uint64_t t = now_ticks();
    samples[i] = t - prev;
    prev = t;
  }
}

void follower_futex(Handles& h, std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto v = static_cast<std::uint32_t>(i + 1);
    futex_await(*h.futex_ping, v);
    h.futex_pong->store(v, std::memory_order_release);
    (void)shmbus::futex_wake(h.futex_pong, 1);
  }
}

constexpr auto kAwaitTimeout = std::chrono::seconds(10);

void leader_eventcount(Handles& h, std::uint64_t count, std::uint64_t* samples, Stats& st) {
  std::uint64_t prev = now_ticks();
  for (std::uint64_t i = 0; i < count; ++i) {
    if (h.ec_ping.try_push(&i, sizeof i) != RingStatus::ok) die("eventcount ping ring full");
    h.ev_ping.notify();
    SlotView v;
    if (!h.ev_pong.await([&] { return h.ec_pong.try_peek(v); }, kAwaitTimeout, 0))
      die("eventcount: no echo within 10 s");
    std::uint64_t echo;
    std::memcpy(&echo, v.data, sizeof echo);
    h.ec_pong.release();
    const std::uint64_t t = now_ticks();
    samples[i] = t - prev;
    prev = t;
    st.errors += echo != i;
  }
}

void follower_eventcount(Handles& h, std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) {
    SlotView v;
    if (!h.ev_ping.await([&] { return h.ec_ping.try_peek(v); }, kAwaitTimeout, 0))
      die("eventcount: no ping within 10 s");
    std::uint64_t x;
    std::memcpy(&x, v.data, sizeof x);
    h.ec_ping.release();
    if (h.ec_pong.try_push(&x, sizeof x) != RingStatus::ok) die("eventcount pong ring full");
    h.ev_pong.notify();
  }
}

void run_leader(Handles& h, std::size_t vi, std::uint64_t count, std::uint64_t* samples, Stats& st) {
  const Variant& v = kVariants[vi];
  const int k = v.bytes == 8 ? 0 : 1;
  switch (v.kind) {
    case Kind::floor_line:
      leader_line(*h.line, count, samples);
      break;
    case Kind::spsc_seq:
      leader_rings(h.seq_ping[k], h.seq_pong[k], v.bytes, count, samples, st);
      break;
    case Kind::spsc_idx:
      leader_rings(h.idx_ping[k], h.idx_pong[k], v.bytes, count, samples, st);
      break;
    case Kind::futex:
      leader_futex(h, count, samples);
      break;
    case Kind::eventcount:
      leader_eventcount(h, count, samples, st);
      break;
    case Kind::pool: {
      PoolTx tx{&h.pool_ping};
      PoolRx rx{&h.pool_pong};
      leader_rings(tx, rx, v.bytes, count, samples, st);
      break;
    }
    case Kind::stream:
    case Kind::stream_chunk: {
      StreamTx tx{g_pub_ping.get(), v.kind == Kind::stream_chunk};
      StreamRx rx{g_sub_pong.get(), {}};
      leader_rings(tx, rx, v.bytes, count, samples, st);
      break;
    }
  }
}

void run_follower(Handles& h, std::size_t vi, std::uint64_t count) {
  const Variant& v = kVariants[vi];
  const int k = v.bytes == 8 ? 0 : 1;
  switch (v.kind) {
    case Kind::floor_line:
      follower_line(*h.line, count);
      break;
    case Kind::spsc_seq:
      follower_rings(h.seq_ping[k], h.seq_pong[k], count);
      break;
    case Kind::spsc_idx:
      follower_rings(h.idx_ping[k], h.idx_pong[k], count);
      break;
    case Kind::futex:
      follower_futex(h, count);
      break;
    case Kind::eventcount:
      follower_eventcount(h, count);
      break;
    case Kind::pool: {
      PoolRx rx{&h.pool_ping};
      PoolTx tx{&h.pool_pong};
      follower_rings(rx, tx, count);
      break;
    }
    case Kind::stream:
    case Kind::stream_chunk: {
      StreamRx rx{g_sub_ping.get(), {}};
      StreamTx tx{g_pub_pong.get(), v.kind == Kind::stream_chunk};
      follower_rings(rx, tx, count);
      break;
    }
  }
}

[[noreturn]] void follower_main(Handles h) {
  std::uint32_t last = 0;
  for (;;) {
    std::uint32_t c;
    // A-C1: pairs with R-C1 in command().
    while ((c = h.control->cmd_seq.load(std::memory_order_acquire)) == last) _mm_pause();
    last = c;
    if (h.control->variant == kQuit) _exit(0);
    run_follower(h, h.control->variant, h.control->count);
    h.ack->done_seq.store(c, std::memory_order_release);  // R-C2: pairs with A-C2 in command().
  }
}

// Leader: run one round of variant vi with the follower and wait for its acknowledgement.
void command(Handles& h, std::uint32_t& seq, std::size_t vi, std::uint64_t count, std::uint64_t* samples,
             Stats& st) {
  // Reset the bare words; the follower is idle between commands, and R-C1 publishes the resets.
  h.line->store(0, std::memory_order_relaxed);
  h.futex_ping->store(0, std::memory_order_relaxed);
  h.futex_pong->store(0, std::memory_order_relaxed);
  h.control->variant = static_cast<std::uint32_t>(vi);
  h.control->count = count;
  h.control->cmd_seq.store(++seq, std::memory_order_release);  // R-C1
  run_leader(h, vi, count, samples, st);
  while (h.ack->done_seq.load(std::memory_order_acquire) != seq) _mm_pause();  // A-C2
}

// ---- set-up, statistics, report ---------------------------------------------------------------------

pid_t g_child = -1;
volatile sig_atomic_t g_expect_child_exit = 0;

void on_sigchld(int) {
  if (g_expect_child_exit) return;
  static const char msg[] = "shmbus-pingpong: the follower died during the run\n";
  (void)!::write(2, msg, sizeof msg - 1);
  _exit(1);
}

struct Options {
  std::uint64_t iters = 200'000;
  std::uint64_t round = 20'000;
  std::uint64_t warmup = 2'000;
  int cpu_leader = 0, cpu_follower = 1;
  std::vector<std::size_t> variants;
  std::string csv;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(
      stderr,
      "shmbus-pingpong: %s\n"
      "usage: shmbus-pingpong [--iters N] [--round N] [--warmup N] [--variants a,b,..] [--cpus L,F]\n"
      "                       [--clock tsc|mono] [--csv FILE]\n"
      "  --iters    round trips per variant (default 200000)\n"
      "  --round    round trips per interleaved round (default 20000)\n"
      "  --warmup   unrecorded round trips per variant before the first round (default 2000)\n"
      "  --variants comma-separated prefixes of variant names (default: all):",
      why);
  for (const auto& v : kVariants) std::fprintf(stderr, " \"%s\"", v.name);
  std::fprintf(stderr,
               "\n  --csv      write pooled percentile curves (variant,percentile,ns) for plotting\n");
  std::exit(64);
}

Options parse(int argc, char** argv) {
  Options o;
  auto number = [&](int& i) -> std::uint64_t {
    if (i + 1 >= argc) usage((std::string(argv[i]) + " needs a value").c_str());
    char* end = nullptr;
    const auto v = std::strtoull(argv[++i], &end, 10);
    if (*end != '\0' || v == 0) usage((std::string("bad number \"") + argv[i] + "\"").c_str());
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--iters") {
      o.iters = number(i);
    } else if (a == "--round") {
      o.round = number(i);
    } else if (a == "--warmup") {
      o.warmup = number(i);
    } else if (a == "--cpus" && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%d,%d", &o.cpu_leader, &o.cpu_follower) != 2)
        usage("--cpus takes two CPU numbers, as 0,1");
    } else if (a == "--clock" && i + 1 < argc) {
      const std::string_view c = argv[++i];
      if (c != "tsc" && c != "mono") usage("--clock takes tsc or mono");
      g_use_tsc = c == "tsc";
    } else if (a == "--csv" && i + 1 < argc) {
      o.csv = argv[++i];
    } else if (a == "--variants" && i + 1 < argc) {
      std::string_view list = argv[++i];
      while (!list.empty()) {
        const auto comma = list.find(',');
        const std::string_view item = list.substr(0, comma);
        bool found = false;
        for (std::size_t k = 0; k < kVariants.size(); ++k)
          if (std::string_view(kVariants[k].name).rfind(item, 0) == 0 &&
              std::find(o.variants.begin(), o.variants.end(), k) == o.variants.end()) {
            o.variants.push_back(k);
            found = true;
          }
        if (!found) usage((std::string("no variant starts with \"") + std::string(item) + "\"").c_str());
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
      }
    } else if (a == "-h" || a == "--help") {
      usage("help");
    } else {
      usage((std::string("unknown argument \"") + std::string(a) + "\"").c_str());
    }
  }
  if (o.variants.empty())
    for (std::size_t k = 0; k < kVariants.size(); ++k) o.variants.push_back(k);
  std::sort(o.variants.begin(), o.variants.end());
  if (o.round > o.iters) o.round = o.iters;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const auto wall_start = std::chrono::steady_clock::now();

  // The segment: created, laid out, then unlinked at once (the mapping survives, and is inherited by the
  // follower), so no run leaves a file in /dev/shm.
  const std::string name = "bench-pingpong-" + std::to_string(::getpid());
  std::size_t bytes = 64 * 1024;
  for (std::uint64_t size : {8, 8, 64, 64, 8, 8}) bytes += SpscRing::footprint({kRingCapacity, size, 0});
  bytes += 2 * (sizeof(IndexRingShared) + kRingCapacity * 64 + kCacheLine) +
           2 * (sizeof(IndexRingShared) + kRingCapacity * 128 + kCacheLine);
  const shmbus::ChunkPoolOptions pool_opts{64, 128, {64}};
  bytes += 2 * (ChunkPool::footprint(pool_opts) + kCacheLine);
  Segment seg = must(Segment::create(name, {.size = bytes, .kind = "bench"}));
  if (auto st = Segment::remove(name); !st) die(st.error().message());
  Layout l;
  l.control = must(seg.allocate<Control>());
  l.ack = must(seg.allocate<Ack>());
  l.line = must(seg.allocate<Word64>());
  l.futex_ping = must(seg.allocate<Word32>());
  l.futex_pong = must(seg.allocate<Word32>());
  for (int k = 0; k < 2; ++k) {
    const std::uint64_t size = k == 0 ? 8 : 64;
    l.seq_ping[k] = must(SpscRing::place(seg, {kRingCapacity, size, 0}));
    l.seq_pong[k] = must(SpscRing::place(seg, {kRingCapacity, size, 0}));
    l.idx_ping[k] = IndexRing::place(seg, kRingCapacity, size);
    l.idx_pong[k] = IndexRing::place(seg, kRingCapacity, size);
  }
  l.ec_ping = must(SpscRing::place(seg, {kRingCapacity, 8, 0}));
  l.ec_pong = must(SpscRing::place(seg, {kRingCapacity, 8, 0}));
  l.ev_ping = must(seg.allocate<EventCountShared>());
  l.ev_pong = must(seg.allocate<EventCountShared>());
  EventCount::init(seg.at(l.ev_ping));
  EventCount::init(seg.at(l.ev_pong));
  l.pool_ping = must(ChunkPool::place(seg, pool_opts));
  l.pool_pong = must(ChunkPool::place(seg, pool_opts));
  seg.publish();

  // Two stream topics as the broker would make them (depth 8, 64-byte messages, one subscriber each),
  // each with its subscriber and publisher attached (this process plays the broker); unlinked at once.
  const std::string domain = "pp" + std::to_string(::getpid());
  shmbus::TopicOptions to;
  to.kind = shmbus::TopicKind::stream;
  to.depth = 8;
  to.max_size = 64;
  to.max_subscribers = 1;
  to.max_publishers = 1;
  auto ping = std::make_shared<TopicHandle>(must(TopicHandle::create(domain, 1, "pingpong.ping", to)));
  auto pong = std::make_shared<TopicHandle>(must(TopicHandle::create(domain, 2, "pingpong.pong", to)));
  (void)TopicHandle::remove(domain, 1);
  (void)TopicHandle::remove(domain, 2);
  auto attach = [&](const std::shared_ptr<TopicHandle>& t,
                    std::unique_ptr<shmbus::detail::StreamPublisher>& pub,
                    std::unique_ptr<shmbus::detail::StreamSubscriber>& sub) {
    shmbus::detail::StreamSupervisor sup(*t);
    const std::uint32_t ss = must(sup.attach_subscriber(shmbus::OwnerId::self(), 1));
    const std::uint32_t ps = must(sup.attach_publisher(shmbus::OwnerId::self(), 2, 1));
    sub = must(shmbus::detail::StreamSubscriber::attach(t, ss));
    pub = must(shmbus::detail::StreamPublisher::attach(t, ps, false));
  };
  attach(ping, g_pub_ping, g_sub_ping);
  attach(pong, g_pub_pong, g_sub_pong);

  struct sigaction sa {};
  sa.sa_handler = on_sigchld;
  sigaction(SIGCHLD, &sa, nullptr);
  const pid_t parent = ::getpid();
  g_child = ::fork();
  if (g_child < 0) die(std::string("fork: ") + std::strerror(errno));
  if (g_child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) _exit(1);
    if (!pin_self(opt.cpu_follower))
      std::fprintf(stderr, "shmbus-pingpong: cannot pin the follower; unpinned\n");
    follower_main(attach_all(seg, l));
  }
  const bool pinned = pin_self(opt.cpu_leader);
  if (!pinned) std::fprintf(stderr, "shmbus-pingpong: cannot pin the leader; unpinned\n");
  Handles h = attach_all(seg, l);

  if (g_use_tsc) g_ns_per_tick = calibrate_tsc();
  const double tsc_before = g_ns_per_tick;
  const double stamp_ns = timestamp_overhead_ns(g_ns_per_tick);

  std::uint32_t seq = 0;
  Stats stats;
  const std::size_t nv = kVariants.size();
  std::vector<std::vector<std::uint64_t>> samples(nv);
  std::vector<std::uint64_t> scratch(std::max(opt.warmup, opt.round));
  for (std::size_t vi : opt.variants) samples[vi].resize(opt.iters);

  // Warm-up: every variant once, unrecorded (page-in, branch predictors, the vCPUs out of idle).
  for (std::size_t vi : opt.variants) {
    const std::uint64_t n = kVariants[vi].blocking ? std::max<std::uint64_t>(opt.warmup / 10, 1) : opt.warmup;
    command(h, seq, vi, n, scratch.data(), stats);
  }

  // Interleaved rounds: A B C ... A B C ...
  // cpu: the leader's thread CPU time over the round's wall time. The busy variants spin throughout, so for
  // them it is the share of the CPU the host gave this vCPU (the guest accounts host-side preemption as
  // lost time); well below 1.0 means the round ran throttled.
  struct Round {
    std::size_t variant, cycle;
    std::uint64_t first, count;
    double cpu;
  };
  std::vector<Round> rounds;
  std::vector<double> seconds(nv, 0.0);
  std::size_t cycle = 0;
  for (std::uint64_t done = 0; done < opt.iters; done += opt.round, ++cycle) {
    const std::uint64_t n = std::min(opt.round, opt.iters - done);
    for (std::size_t vi : opt.variants) {
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = thread_cpu_seconds();
      command(h, seq, vi, n, samples[vi].data() + done, stats);
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      seconds[vi] += wall;
      rounds.push_back({vi, cycle, done, n, (thread_cpu_seconds() - c0) / wall});
    }
  }
  const std::size_t cycles = cycle;

  g_expect_child_exit = 1;
  h.control->variant = kQuit;
  h.control->cmd_seq.store(++seq, std::memory_order_release);  // R-C1
  int status = 0;
  ::waitpid(g_child, &status, 0);
  const double tsc_after = g_use_tsc ? calibrate_tsc() : 1.0;

  // ---- statistics ----
  const double scale = g_use_tsc ? g_ns_per_tick : 1.0;
  auto to_ns = [&](std::size_t vi, std::uint64_t first, std::uint64_t count) {
    std::vector<double> v(count);
    for (std::uint64_t i = 0; i < count; ++i) v[i] = static_cast<double>(samples[vi][first + i]) * scale;
    return v;
  };
  // per_round[vi][cycle]
  std::vector<std::vector<Percentiles>> per_round(nv, std::vector<Percentiles>(cycles));
  std::vector<std::vector<double>> cpu_share(nv, std::vector<double>(cycles));
  for (const Round& r : rounds) {
    per_round[r.variant][r.cycle] = percentiles(to_ns(r.variant, r.first, r.count));
    cpu_share[r.variant][r.cycle] = r.cpu;
  }

  auto selected = [&](std::size_t vi) {
    return std::find(opt.variants.begin(), opt.variants.end(), vi) != opt.variants.end();
  };

  utsname u{};
  ::uname(&u);
  std::printf("shmbus-pingpong: two processes, leader on CPU %d, follower on CPU %d%s\n", opt.cpu_leader,
              opt.cpu_follower, pinned ? "" : " (UNPINNED)");
  std::printf("CPU: %s, %ld online; kernel %s\n", cpu_model().c_str(), sysconf(_SC_NPROCESSORS_ONLN),
              u.release);
  if (g_use_tsc)
    std::printf(
        "clock: TSC %.4f GHz (calibrated against CLOCK_MONOTONIC_RAW; %+.1f ppm by the end), %.1f ns per "
        "timestamp, included once in every sample\n",
        1.0 / tsc_before, (tsc_before / tsc_after - 1.0) * 1e6, stamp_ns);
  else
    std::printf(
        "clock: clock_gettime(CLOCK_MONOTONIC), %.1f ns per timestamp, included once in every sample\n",
        stamp_ns);
  std::printf("%" PRIu64 " round trips per variant in %zu interleaved rounds of %" PRIu64
              " (+ warm-up); values: median over rounds of each round's percentile, max over all\n\n",
              opt.iters, cycles, opt.round);

  std::printf("%-22s %9s %9s %9s %9s %10s %7s %7s %5s  %s\n", "variant", "p50 ns", "p90 ns", "p99 ns",
              "p99.9 ns", "max ns", "ratio", "time s", "cpu%", "ratio to");
  for (std::size_t vi : opt.variants) {
    std::vector<double> p50, p90, p99, p999;
    double mx = 0;
    for (const auto& p : per_round[vi]) {
      p50.push_back(p.p50);
      p90.push_back(p.p90);
      p99.push_back(p.p99);
      p999.push_back(p.p999);
      mx = std::max(mx, p.max);
    }
    // Paired ratio: this variant's p50 over the floor's p50 of the same cycle, median over cycles.
    const std::size_t floor = kVariants[vi].blocking ? kFloorBlocking : kFloorBusy;
    std::string ratio = "-";
    if (selected(floor)) {
      std::vector<double> r;
      for (std::size_t c = 0; c < cycles; ++c) r.push_back(per_round[vi][c].p50 / per_round[floor][c].p50);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.2f", median(r));
      ratio = buf;
    }
    char cpu[16] = "-";
    if (!kVariants[vi].blocking) std::snprintf(cpu, sizeof cpu, "%.0f", 100 * median(cpu_share[vi]));
    std::printf("%-22s %9.0f %9.0f %9.0f %9.0f %10.0f %7s %7.2f %5s  %s\n", kVariants[vi].name, median(p50),
                median(p90), median(p99), median(p999), mx, ratio.c_str(), seconds[vi], cpu,
                kVariants[floor].name);
  }

  std::printf("\np50 ns per round (cycle 1..%zu), to show the guest's regime changes:\n", cycles);
  for (std::size_t vi : opt.variants) {
    std::printf("%-22s", kVariants[vi].name);
    for (std::size_t c = 0; c < cycles; ++c) std::printf(" %6.0f", per_round[vi][c].p50);
    std::printf("\n");
  }
  std::printf("%-22s", "leader cpu% (busy)");
  for (std::size_t c = 0; c < cycles; ++c) {
    std::vector<double> busy;
    for (std::size_t vi : opt.variants)
      if (!kVariants[vi].blocking) busy.push_back(100 * cpu_share[vi][c]);
    if (busy.empty())
      std::printf(" %6s", "-");
    else
      std::printf(" %6.0f", median(busy));
  }
  std::printf("\n");

  if (!opt.csv.empty()) {
    std::ofstream out(opt.csv);
    out << "variant,percentile,ns\n";
    const double qs[] = {0,  1,  5,  10, 20, 30,   40,   50,    60,    70,     75, 80,
                         85, 90, 95, 98, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100};
    for (std::size_t vi : opt.variants) {
      auto v = to_ns(vi, 0, opt.iters);
      std::sort(v.begin(), v.end());
      for (double q : qs) out << '"' << kVariants[vi].name << "\"," << q << ',' << pct(v, q / 100.0) << '\n';
    }
    std::printf("\npercentile curves written to %s\n", opt.csv.c_str());
  }

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  std::printf("\ntotal %.1f s\n", total);
  if (stats.errors != 0) {
    std::printf("ERROR: %" PRIu64 " echoes did not match what was sent\n", stats.errors);
    return 1;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::printf("ERROR: the follower exited with status %d\n", status);
    return 1;
  }
  return 0;
}
