// MpmcRing: a bounded multi-producer multi-consumer ring of 32-bit values in shared memory that no
// process can wedge by dying, at any point of any operation.
//
// Why not Vyukov/Disruptor: those reserve a position (CAS or fetch_add on an index) and write the slot
// afterwards. A producer killed between the two leaves a reserved slot that is never written, and every
// consumer waits on it forever. Here the one step that makes an operation happen is a single CAS on the
// cell, which carries the value itself; the head and tail indices are hints that any process advances.
//
// Cell: 64 bits = lap (31 bits) | full (1 bit) | value (32 bits). For position p with lap L = (p >> log2
// capacity) mod 2^31, the cell at p & mask is EMPTY(L) when p may be pushed, FULL(L, v) when p holds v,
// and EMPTY(L + 1) once p has been popped (which is "may be pushed" for p + capacity).
//
//   push(v): t = tail; if cell == EMPTY(lap t): CAS it to FULL(lap t, v)  <- the push happens here
//            then CAS tail t -> t+1 (a helper may do it first). If the cell is FULL(lap t) or EMPTY(lap t
//            + 1) someone pushed at t already: help tail forward and retry. FULL(lap t - 1): full.
//   pop():   h = head; if cell == FULL(lap h, v): CAS it to EMPTY(lap h + 1)  <- the pop happens here
//            then CAS head h -> h+1. EMPTY(lap h + 1), or FULL(lap h + 1) (popped, and pushed again for
//            h + capacity while head still lagged at h): popped already, help head forward. EMPTY(lap h):
//            empty.
//
// Proof sketch (no wedge, nothing lost or duplicated but the dying process's own value):
//  - Every push and pop takes effect at exactly one successful cell CAS. A process killed before it has
//    done nothing; killed after it has done all that matters: the index it did not advance is advanced
//    by the next operation that reads the cell (helping), so no state waits on a dead process.
//  - tail moves past p only when cell p holds p's value or has been popped; head moves past p only when p
//    has been popped. Hence pushes fill positions in order and pops take them in order (FIFO), each
//    value lands in exactly one position and each position is popped at most once (the CAS from
//    FULL(L, v) succeeds once).
//  - A value is lost only when its popper dies after the pop CAS (it held it) and duplicated never.
//    ChunkPool adds owner words on top so that even that value is returned by reclaim().
//  - ABA on a cell needs a process stalled for 2^31 laps of the ring (2^31 x capacity positions) between
//    its load and its CAS. For a plain ring the late CAS then acts on the current lap: order may suffer,
//    nothing is lost or duplicated. For a ChunkPool ring it can strand one chunk until its pusher exits
//    (reclaim then returns it). With capacity >= 64 that is a stall over 2^37 operations.
//
// Memory ordering:
//  R3 (push CAS, acq_rel) pairs with A3 (pop's cell load, acquire): what the pusher wrote before pushing
//     (a chunk's payload, its owner stamp) is visible to the popper.
//  R4 (pop CAS, acq_rel) pairs with A4 (push's cell load, acquire): a pusher reuses a cell only after
//     the popper's reads of it.
//  head and tail are hints: their loads are acquire and CASes release only so that a process that reads a
//  moved index also sees the cell state that justified the move; correctness rests on the cells.
//
// Positions are 64-bit and free-running; lap arithmetic is mod 2^31 and stays consistent across 2^64
// because capacity <= 2^32.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shmbus/config.hpp"
#include "shmbus/fault.hpp"
#include "shmbus/result.hpp"
#include "shmbus/segment.hpp"
#include "shmbus/spsc_ring.hpp"  // RingStatus

namespace shmbus {

struct MpmcRingShared {
  std::uint64_t capacity;      // power of two, 2 .. 2^32
  std::uint64_t shift;         // log2(capacity)
  std::uint64_t cells_offset;  // from the segment base; capacity cells of 8 bytes
  std::uint64_t initial_pos;
  std::uint8_t pad0[kCacheLine - 32];
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // hint: next position to push
  std::uint8_t pad1[kCacheLine - 8];
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // hint: next position to pop
  std::uint8_t pad2[kCacheLine - 8];
};
static_assert(sizeof(MpmcRingShared) == 3 * kCacheLine);
static_assert(offsetof(MpmcRingShared, tail) == kCacheLine);
static_assert(offsetof(MpmcRingShared, head) == 2 * kCacheLine);
static_assert(std::is_standard_layout_v<MpmcRingShared>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct MpmcRingOptions {
  std::uint64_t capacity = 1024;  // a power of two, 2 .. 2^32
  std::uint64_t initial_pos = 0;
};

class MpmcRing {
 public:
  using Cell = std::atomic<std::uint64_t>;
  static constexpr std::uint64_t kLapMask = (1ULL << 31) - 1;
  static constexpr std::uint64_t kFullBit = 1ULL << 32;

  static std::size_t footprint(const MpmcRingOptions& options);
  static Result<Ref<MpmcRingShared>> place(Segment& segment, const MpmcRingOptions& options);
  static Result<MpmcRing> attach(const Segment& segment, Ref<MpmcRingShared> ref);

  MpmcRing() = default;

  // ---- the algorithm, once ----
  // push_with / pop_with are the ring's only push and pop; try_push / try_pop are them with PlainHooks.
  // A ring whose values carry their own claim word (ChunkPool: the chunk's owner word, see
  // chunk_pool.hpp) passes hooks that stamp the value before the cell CAS and claim it before the cell is
  // emptied; the cell states, the helping of head and tail and the full/empty tests stay here.
  //
  // Push hooks:
  //   bool stamp(t)        before the cell CAS at position t; false: the value left the caller's hands
  //                        meanwhile (push_with returns ok without pushing).
  //   void pushed()        after the cell CAS succeeded.
  //   bool holds(v, p)     the ring looks full and cell p (the oldest) holds v: true when v is still
  //                        queued there; false when it was claimed by a popper that did not empty the cell
  //                        (it died, or is about to): the pusher then empties it and advances head.
  //   RingStatus full()    what a full ring returns.
  // Pop hooks:
  //   Claim claim(v, h)    the cell at position h holds v:
  //                          Claim::cell   the cell CAS decides who pops (a plain ring);
  //                          Claim::taken  the caller claimed v elsewhere: empty the cell, return v;
  //                          Claim::lost   another popper claimed v first: read head again;
  //                          Claim::stale  v was claimed earlier by a popper that did not empty the cell
  //                                        (or is damaged): empty it, advance head, go on.
  //   void popped()        after a Claim::cell pop succeeded.
  enum class Claim : std::uint8_t { cell, taken, lost, stale };

  struct PlainHooks {
    bool stamp(std::uint64_t) noexcept {
      SHMBUS_FAULT_POINT("mpmc.push.before_cas");
      return true;
    }
    void pushed() noexcept { SHMBUS_FAULT_POINT("mpmc.push.after_cas"); }
    bool holds(std::uint32_t, std::uint64_t) noexcept { return true; }
    RingStatus full() noexcept { return RingStatus::full; }
    Claim claim(std::uint32_t, std::uint64_t) noexcept {
      SHMBUS_FAULT_POINT("mpmc.pop.before_cas");
      return Claim::cell;
    }
    void popped() noexcept { SHMBUS_FAULT_POINT("mpmc.pop.after_cas"); }
  };

  RingStatus try_push(std::uint32_t value) noexcept {
    PlainHooks hooks;
    return push_with(value, hooks);
  }
  RingStatus try_pop(std::uint32_t& value) noexcept {
    PlainHooks hooks;
    return pop_with(value, hooks);
  }

  template <typename Hooks>
  RingStatus push_with(std::uint32_t value, Hooks& hooks) noexcept {
    for (;;) {
      const std::uint64_t t = s_->tail.load(std::memory_order_acquire);
      Cell& c = cell(t);
      std::uint64_t cur = c.load(std::memory_order_acquire);  // A4: pairs with R4 in pop_with().
      const std::uint64_t l = lap(t);
      if (cur == empty(l)) {
        if (!hooks.stamp(t)) return RingStatus::ok;
        // R3: the push happens here. Pairs with A3 in pop_with().
        if (c.compare_exchange_strong(cur, full(l, value), std::memory_order_acq_rel)) {
          hooks.pushed();
          advance(s_->tail, t);
          return RingStatus::ok;
        }
        continue;  // someone pushed at t first
      }
      if (pushed_at(cur, l)) {
        advance(s_->tail, t);  // help a pusher that has not advanced tail (or died)
        continue;
      }
      if (is_full(cur) && lap_of(cur) == lap_add(l, kLapMask) &&
          s_->tail.load(std::memory_order_acquire) == t) {
        // Cell t still holds position t - capacity.
        const std::uint64_t p = t - capacity_;
        if (!hooks.holds(static_cast<std::uint32_t>(cur), p)) {
          c.compare_exchange_strong(cur, empty(l), std::memory_order_acq_rel);
          advance(s_->head, p);
          continue;
        }
        return hooks.full();
      }
    }
  }

  template <typename Hooks>
  RingStatus pop_with(std::uint32_t& value, Hooks& hooks) noexcept {
    for (;;) {
      const std::uint64_t h = s_->head.load(std::memory_order_acquire);
      Cell& c = cell(h);
      std::uint64_t cur = c.load(std::memory_order_acquire);  // A3: pairs with R3 in push_with().
      const std::uint64_t l = lap(h);
      if (is_full(cur) && lap_of(cur) == l) {
        const auto v = static_cast<std::uint32_t>(cur);
        const Claim k = hooks.claim(v, h);
        if (k == Claim::lost) continue;
        // R4: pairs with A4 in push_with(): a pusher reuses the cell only after our reads of it. For
        // Claim::cell this CAS is the pop; otherwise it only cleans the cell (whoever does it first).
        const bool emptied = c.compare_exchange_strong(cur, empty(lap_add(l, 1)), std::memory_order_acq_rel);
        if (k == Claim::cell) {
          if (!emptied) continue;
          hooks.popped();
        }
        advance(s_->head, h);
        if (k == Claim::stale) continue;
        value = v;
        return RingStatus::ok;
      }
      if (popped_at(cur, l)) {
        advance(s_->head, h);  // help a popper that has not advanced head (or died)
        continue;
      }
      if (cur == empty(l) && s_->head.load(std::memory_order_acquire) == h) return RingStatus::empty;
    }
  }

  std::uint64_t capacity() const { return capacity_; }
  // tail - head, clamped at 0: exact when no operation is in flight.
  std::uint64_t size_approx() const {
    const std::uint64_t h = s_->head.load(std::memory_order_acquire);
    const std::uint64_t t = s_->tail.load(std::memory_order_acquire);
    return t - h > capacity_ ? 0 : t - h;
  }
  MpmcRingShared* shared() const { return s_; }

  // ---- cell arithmetic ----
  Cell& cell(std::uint64_t pos) const { return cells_[pos & mask_]; }
  std::uint64_t lap(std::uint64_t pos) const { return (pos >> shift_) & kLapMask; }
  static std::uint64_t lap_of(std::uint64_t cell) { return cell >> 33; }
  static std::uint64_t lap_add(std::uint64_t l, std::uint64_t d) { return (l + d) & kLapMask; }
  static bool is_full(std::uint64_t cell) { return (cell & kFullBit) != 0; }
  static std::uint64_t empty(std::uint64_t l) { return l << 33; }
  static std::uint64_t full(std::uint64_t l, std::uint32_t v) { return (l << 33) | kFullBit | v; }
  // True when position with lap l has been pushed already (holds its value, or was popped since).
  static bool pushed_at(std::uint64_t cur, std::uint64_t l) {
    return (is_full(cur) && lap_of(cur) == l) || cur == empty(lap_add(l, 1));
  }
  // True when position with lap l has been popped already: the cell is empty for the next lap, or (when
  // head lagged behind a popper that died before advancing it) already holds the next lap's value.
  static bool popped_at(std::uint64_t cur, std::uint64_t l) {
    return cur == empty(lap_add(l, 1)) || (is_full(cur) && lap_of(cur) == lap_add(l, 1));
  }
  // CAS index from `from` to from+1; failure means another process advanced it.
  static void advance(std::atomic<std::uint64_t>& index, std::uint64_t from) noexcept {
    // Release: whoever reads the new index (acquire) also sees the cell state that justified the move.
    index.compare_exchange_strong(from, from + 1, std::memory_order_release, std::memory_order_relaxed);
  }

 private:
  MpmcRingShared* s_ = nullptr;
  Cell* cells_ = nullptr;
  std::uint64_t capacity_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t shift_ = 0;
};

}  // namespace shmbus
