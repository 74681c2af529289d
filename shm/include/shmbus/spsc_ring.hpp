// SpscRing: a single-producer single-consumer ring of fixed-size slots in shared memory.
//
// One process (or thread) produces, one consumes. Capacity is a power of two; positions are 64-bit and
// free-running (they never wrap in practice, and the code is correct across 2^64 as well). Each slot
// starts with a 16-byte SlotHeader {seq, size} followed by up to `slot_size` payload bytes; slots are
// padded to 64 bytes, so a message of up to 48 bytes shares one hardware line with its sequence word.
//
// The consumer polls the slot itself (Disruptor/Aeron style), not a shared head index: a message crosses
// from producer to consumer in the lines of its own slot and nothing else. The consumer publishes its
// `tail` so the producer knows which slots are free; the producer reads `tail` only when its cached copy
// says the ring is full, so in steady state the tail line moves once per lap, not once per message.
//
// Operations: copy (try_push / try_pop), zero copy (try_claim + commit / try_peek + release) and
// batch (pop_batch: one tail store for many messages). A claim without commit is harmless: the next
// try_claim returns the same slot and nothing is visible to the consumer.
//
// Memory ordering:
//  R1 (commit): slot.seq.store(pos, release) after the payload and size are written.
//  A1 (peek):   slot.seq.load(acquire) == pos, pairs with R1: the consumer sees the payload.
//  R2 (release): tail.store(pos + 1, release) after the consumer has read the slot.
//  A2 (claim, when the cache says full): tail.load(acquire), pairs with R2: the producer overwrites a
//      slot only after the consumer's reads of it happened.
//  head in the producer line is informational (stats, a producer re-attaching): relaxed.
//
// Initial state: the slot for position p of the first lap holds seq = p - capacity, which differs from
// p, so it reads as "not yet written". The creator may start at any position (tests start near 2^32
// and 2^64).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "shmbus/config.hpp"
#include "shmbus/result.hpp"
#include "shmbus/segment.hpp"

namespace shmbus {

enum class [[nodiscard]] RingStatus : std::uint8_t{
    ok = 0,
    full,  // back-pressure, not an error
    empty,
    too_big,  // the message is larger than the slot; nothing was written
};

struct SpscSlotHeader {
  std::atomic<std::uint64_t> seq;  // position of the message in the slot (R1/A1)
  std::uint32_t size;              // payload bytes
  std::uint32_t flags;             // free for the layer above
};
static_assert(sizeof(SpscSlotHeader) == 16);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct SpscRingShared {
  // Geometry: written by the creator, read-only afterwards.
  std::uint64_t capacity;      // power of two
  std::uint64_t slot_size;     // payload bytes per slot
  std::uint64_t slot_stride;   // bytes per slot, header included, a multiple of 64
  std::uint64_t slots_offset;  // from the segment base
  std::uint64_t initial_pos;
  std::uint8_t pad0[kCacheLine - 40];
  // Producer line.
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // next position to write (informational)
  std::uint8_t pad1[kCacheLine - 8];
  // Consumer line.
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // next position to read (R2/A2)
  std::uint8_t pad2[kCacheLine - 8];
};
static_assert(sizeof(SpscRingShared) == 3 * kCacheLine);
static_assert(offsetof(SpscRingShared, head) == kCacheLine);
static_assert(offsetof(SpscRingShared, tail) == 2 * kCacheLine);
static_assert(std::is_standard_layout_v<SpscRingShared>);

struct SpscRingOptions {
  std::uint64_t capacity = 1024;  // slots, a power of two >= 2
  std::uint64_t slot_size = 64;   // payload bytes, 1 .. 2^31
  std::uint64_t initial_pos = 0;
};

// A view of a message in place (zero copy). Valid until release().
struct SlotView {
  const std::byte* data;
  std::uint32_t size;
  std::uint32_t flags;
};

class SpscRing {
 public:
  // Bytes that place() needs for these options (with worst-case alignment).
  static std::size_t footprint(const SpscRingOptions& options);
  // Lay out and initialise a ring inside a segment that is being built.
  static Result<Ref<SpscRingShared>> place(Segment& segment, const SpscRingOptions& options);
  // Attach to a ring in a mapped segment; validates the geometry against the mapping (never faults).
  static Result<SpscRing> attach(const Segment& segment, Ref<SpscRingShared> ref);

  SpscRing() = default;

  // ---- producer ----
  RingStatus try_push(const void* data, std::size_t size, std::uint32_t flags = 0) noexcept {
    if (size > slot_size_) return RingStatus::too_big;
    std::byte* p = try_claim();
    if (p == nullptr) return RingStatus::full;
    std::memcpy(p, data, size);
    commit(static_cast<std::uint32_t>(size), flags);
    return RingStatus::ok;
  }
  // The payload area of the next free slot (slot_size() bytes), or nullptr when full.
  std::byte* try_claim() noexcept {
    if (head_ - cached_tail_ >= capacity_) {
      // A2: pairs with R2 in release(): the consumer is done with the slot we will overwrite.
      cached_tail_ = s_->tail.load(std::memory_order_acquire);
      if (head_ - cached_tail_ >= capacity_) return nullptr;
    }
    return slot(head_) + sizeof(SpscSlotHeader);
  }
  // Make the claimed slot visible with `size` payload bytes.
  void commit(std::uint32_t size, std::uint32_t flags = 0) noexcept {
    auto* h = reinterpret_cast<SpscSlotHeader*>(slot(head_));
    h->size = size;
    h->flags = flags;
    // R1: pairs with A1 in try_peek(): payload, size and flags are visible once seq is.
    h->seq.store(head_, std::memory_order_release);
    ++head_;
    // Relaxed: head is read only for stats and by a producer that re-attaches after this one is gone.
    s_->head.store(head_, std::memory_order_relaxed);
  }

  // ---- consumer ----
  RingStatus try_pop(void* out, std::size_t capacity, std::size_t* size,
                     std::uint32_t* flags = nullptr) noexcept {
    SlotView v;
    if (!try_peek(v)) return RingStatus::empty;
    if (v.size > capacity) return RingStatus::too_big;  // left in the ring; the caller needs a bigger buffer
    std::memcpy(out, v.data, v.size);
    *size = v.size;
    if (flags != nullptr) *flags = v.flags;
    release();
    return RingStatus::ok;
  }
  bool try_peek(SlotView& view) noexcept {
    const auto* h = reinterpret_cast<const SpscSlotHeader*>(slot(tail_));
    // A1: pairs with R1 in commit().
    if (h->seq.load(std::memory_order_acquire) != tail_) return false;
    // A writer can only damage its own messages; clamp so the reader never leaves the slot.
    view.size = h->size <= slot_size_ ? h->size : static_cast<std::uint32_t>(slot_size_);
    view.flags = h->flags;
    view.data = reinterpret_cast<const std::byte*>(h) + sizeof(SpscSlotHeader);
    return true;
  }
  // Give back the slot returned by the last successful try_peek().
  void release() noexcept {
    ++tail_;
    // R2: pairs with A2 in try_claim().
    s_->tail.store(tail_, std::memory_order_release);
  }
  // Hand up to `max` ready messages to f(SlotView) in order, then release them with one tail store.
  template <typename F>
  std::size_t pop_batch(F&& f, std::size_t max) noexcept {
    std::size_t n = 0;
    for (; n < max; ++n) {
      const auto* h = reinterpret_cast<const SpscSlotHeader*>(slot(tail_ + n));
      if (h->seq.load(std::memory_order_acquire) != tail_ + n) break;  // A1
      SlotView v{reinterpret_cast<const std::byte*>(h) + sizeof(SpscSlotHeader),
                 h->size <= slot_size_ ? h->size : static_cast<std::uint32_t>(slot_size_), h->flags};
      f(v);
    }
    if (n != 0) {
      tail_ += n;
      s_->tail.store(tail_, std::memory_order_release);  // R2
    }
    return n;
  }

  // ---- either side ----
  std::uint64_t capacity() const { return capacity_; }
  std::size_t slot_size() const { return slot_size_; }
  // Messages in the ring as seen from here (exact on the consumer side, an upper bound elsewhere).
  std::uint64_t size_approx() const {
    return s_->head.load(std::memory_order_relaxed) - s_->tail.load(std::memory_order_relaxed);
  }
  SpscRingShared* shared() const { return s_; }

 private:
  std::byte* slot(std::uint64_t pos) const { return slots_ + (pos & mask_) * stride_; }

  // Read-only geometry, then the producer's and the consumer's private positions on lines of their own:
  // a handle shared by a producer thread and a consumer thread (or two handles side by side in memory)
  // would otherwise ping-pong this object between cores on every message (measured: 6 M vs 55 M msg/s).
  SpscRingShared* s_ = nullptr;
  std::byte* slots_ = nullptr;
  std::uint64_t capacity_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t stride_ = 0;
  std::uint64_t slot_size_ = 0;
  alignas(kHwLine) std::uint64_t head_ = 0;  // producer
  std::uint64_t cached_tail_ = 0;            // producer
  alignas(kHwLine) std::uint64_t tail_ = 0;  // consumer
};

}  // namespace shmbus
