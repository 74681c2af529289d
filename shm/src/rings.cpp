// Placement and attachment of SpscRing and MpmcRing; the hot paths are inline in the headers.
#include <bit>

#include "shmbus/mpmc_ring.hpp"
#include "shmbus/spsc_ring.hpp"

namespace shmbus {
namespace {

std::uint64_t spsc_stride(std::uint64_t slot_size) {
  return (sizeof(SpscSlotHeader) + slot_size + kHwLine - 1) / kHwLine * kHwLine;
}

Status check_spsc(const SpscRingOptions& o) {
  if (o.capacity < 2 || !std::has_single_bit(o.capacity) || o.capacity > (1ULL << 32))
    return Error(Errc::invalid_argument, "SPSC ring capacity " + std::to_string(o.capacity) +
                                             " must be a power of two from 2 to 2^32");
  if (o.slot_size < 1 || o.slot_size > (1ULL << 31))
    return Error(Errc::invalid_argument,
                 "SPSC ring slot size " + std::to_string(o.slot_size) + " must be from 1 to 2^31 bytes");
  return {};
}

Status check_mpmc(const MpmcRingOptions& o) {
  if (o.capacity < 2 || !std::has_single_bit(o.capacity) || o.capacity > (1ULL << 32))
    return Error(Errc::invalid_argument, "MPMC ring capacity " + std::to_string(o.capacity) +
                                             " must be a power of two from 2 to 2^32");
  return {};
}

}  // namespace

std::size_t SpscRing::footprint(const SpscRingOptions& o) {
  return sizeof(SpscRingShared) + kCacheLine + o.capacity * spsc_stride(o.slot_size) + kCacheLine;
}

Result<Ref<SpscRingShared>> SpscRing::place(Segment& seg, const SpscRingOptions& o) {
  if (auto ok = check_spsc(o); !ok) return ok.error();
  auto ref = seg.allocate<SpscRingShared>(1, kCacheLine);
  if (!ref) return ref.error();
  const std::uint64_t stride = spsc_stride(o.slot_size);
  auto slots = seg.allocate_bytes(o.capacity * stride, kCacheLine);
  if (!slots) return slots.error();
  SpscRingShared* s = seg.at(*ref);
  s->capacity = o.capacity;
  s->slot_size = o.slot_size;
  s->slot_stride = stride;
  s->slots_offset = *slots;
  s->initial_pos = o.initial_pos;
  s->head.store(o.initial_pos, std::memory_order_relaxed);  // relaxed: published by the segment (R-SEG)
  s->tail.store(o.initial_pos, std::memory_order_relaxed);
  for (std::uint64_t i = 0; i < o.capacity; ++i) {
    const std::uint64_t pos = o.initial_pos + i;
    auto* h = reinterpret_cast<SpscSlotHeader*>(seg.base() + *slots + (pos & (o.capacity - 1)) * stride);
    h->seq.store(pos - o.capacity, std::memory_order_relaxed);  // "not yet written" for the first lap
  }
  return *ref;
}

Result<SpscRing> SpscRing::attach(const Segment& seg, Ref<SpscRingShared> ref) {
  if (!ref || !seg.in_bounds(ref.offset, sizeof(SpscRingShared)) || ref.offset % kCacheLine != 0)
    return Error(Errc::truncated, "SPSC ring at offset " + std::to_string(ref.offset) +
                                      " is outside segment \"" + seg.name() + "\" or misaligned");
  SpscRingShared* s = seg.at(ref);
  SpscRingOptions o{s->capacity, s->slot_size, s->initial_pos};
  if (auto ok = check_spsc(o); !ok)
    return Error(Errc::foreign_segment, "segment \"" + seg.name() + "\": " + ok.error().message());
  if (s->slot_stride != spsc_stride(s->slot_size) || s->slots_offset % kCacheLine != 0 ||
      !seg.in_bounds(s->slots_offset, s->capacity * s->slot_stride))
    return Error(Errc::truncated,
                 "SPSC ring in segment \"" + seg.name() + "\" has slots outside the mapping");
  SpscRing r;
  r.s_ = s;
  r.slots_ = seg.base() + s->slots_offset;
  r.capacity_ = s->capacity;
  r.mask_ = s->capacity - 1;
  r.stride_ = s->slot_stride;
  r.slot_size_ = s->slot_size;
  // Relaxed: each side resumes from the index it owns; the other side's index is re-read with acquire
  // before it matters (A2), and the slots' seq words carry the data ordering (A1).
  r.tail_ = s->tail.load(std::memory_order_acquire);
  r.cached_tail_ = r.tail_;
  // A producer killed between R1 (seq) and its head store leaves head one short. Resynchronise from the
  // slots: never behind tail (the consumer may have read that message already), and past every slot
  // whose seq says it was committed, so a new producer neither reports a false "full" forever nor
  // overwrites a message the consumer may be reading.
  std::uint64_t head = s->head.load(std::memory_order_relaxed);
  if (head - r.tail_ > r.capacity_) head = r.tail_;
  while (head - r.tail_ < r.capacity_ &&
         reinterpret_cast<SpscSlotHeader*>(r.slot(head))->seq.load(std::memory_order_acquire) == head)
    ++head;
  r.head_ = head;
  return r;
}

std::size_t MpmcRing::footprint(const MpmcRingOptions& o) {
  return sizeof(MpmcRingShared) + kCacheLine + o.capacity * sizeof(Cell) + kCacheLine;
}

Result<Ref<MpmcRingShared>> MpmcRing::place(Segment& seg, const MpmcRingOptions& o) {
  if (auto ok = check_mpmc(o); !ok) return ok.error();
  auto ref = seg.allocate<MpmcRingShared>(1, kCacheLine);
  if (!ref) return ref.error();
  auto cells = seg.allocate_bytes(o.capacity * sizeof(Cell), kCacheLine);
  if (!cells) return cells.error();
  MpmcRingShared* s = seg.at(*ref);
  s->capacity = o.capacity;
  s->shift = static_cast<std::uint64_t>(std::countr_zero(o.capacity));
  s->cells_offset = *cells;
  s->initial_pos = o.initial_pos;
  s->tail.store(o.initial_pos, std::memory_order_relaxed);  // relaxed: published by the segment (R-SEG)
  s->head.store(o.initial_pos, std::memory_order_relaxed);
  auto* c = reinterpret_cast<Cell*>(seg.base() + *cells);
  for (std::uint64_t i = 0; i < o.capacity; ++i) {
    const std::uint64_t pos = o.initial_pos + i;
    c[pos & (o.capacity - 1)].store(empty((pos >> s->shift) & kLapMask), std::memory_order_relaxed);
  }
  return *ref;
}

Result<MpmcRing> MpmcRing::attach(const Segment& seg, Ref<MpmcRingShared> ref) {
  if (!ref || !seg.in_bounds(ref.offset, sizeof(MpmcRingShared)) || ref.offset % kCacheLine != 0)
    return Error(Errc::truncated, "MPMC ring at offset " + std::to_string(ref.offset) +
                                      " is outside segment \"" + seg.name() + "\" or misaligned");
  MpmcRingShared* s = seg.at(ref);
  if (auto ok = check_mpmc({s->capacity, s->initial_pos}); !ok)
    return Error(Errc::foreign_segment, "segment \"" + seg.name() + "\": " + ok.error().message());
  if (s->shift != static_cast<std::uint64_t>(std::countr_zero(s->capacity)) || s->cells_offset % 8 != 0 ||
      !seg.in_bounds(s->cells_offset, s->capacity * sizeof(Cell)))
    return Error(Errc::truncated,
                 "MPMC ring in segment \"" + seg.name() + "\" has cells outside the mapping");
  MpmcRing r;
  r.s_ = s;
  r.cells_ = reinterpret_cast<Cell*>(seg.base() + s->cells_offset);
  r.capacity_ = s->capacity;
  r.mask_ = s->capacity - 1;
  r.shift_ = s->shift;
  return r;
}

}  // namespace shmbus
