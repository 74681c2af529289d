#include "shmbus/chunk_pool.hpp"

#include <bit>
#include <unordered_map>

namespace shmbus {
namespace {

std::uint64_t chunk_stride(std::uint64_t chunk_size) {
  return (chunk_size + kHwLine - 1) / kHwLine * kHwLine;
}

Status check_options(const ChunkPoolOptions& o) {
  if (o.chunk_count < 1 || o.chunk_count > (1u << 31))
    return Error(Errc::invalid_argument,
                 "chunk count " + std::to_string(o.chunk_count) + " must be from 1 to 2^31");
  if (o.chunk_size < 1 || o.chunk_size > (1ULL << 32))
    return Error(Errc::invalid_argument,
                 "chunk size " + std::to_string(o.chunk_size) + " must be from 1 to 2^32 bytes");
  if (o.ring_capacities.size() + 1 > kMaxPoolRings)
    return Error(Errc::invalid_argument, std::to_string(o.ring_capacities.size()) +
                                             " message rings asked; a pool holds at most " +
                                             std::to_string(kMaxPoolRings - 1));
  return {};
}

}  // namespace

std::size_t ChunkPool::footprint(const ChunkPoolOptions& o) {
  std::size_t bytes = sizeof(ChunkPoolShared) + kCacheLine;
  bytes += o.chunk_count * sizeof(ChunkHeader) + kCacheLine;
  bytes += o.chunk_count * chunk_stride(o.chunk_size) + kCacheLine;
  bytes += MpmcRing::footprint({std::bit_ceil(std::uint64_t{o.chunk_count} < 2 ? 2 : o.chunk_count), 0});
  for (auto cap : o.ring_capacities) bytes += MpmcRing::footprint({cap, 0});
  return bytes;
}

Result<Ref<ChunkPoolShared>> ChunkPool::place(Segment& seg, const ChunkPoolOptions& o) {
  if (auto ok = check_options(o); !ok) return ok.error();
  auto ref = seg.allocate<ChunkPoolShared>(1, kCacheLine);
  if (!ref) return ref.error();
  auto headers = seg.allocate<ChunkHeader>(o.chunk_count, kCacheLine);
  if (!headers) return headers.error();
  const std::uint64_t stride = chunk_stride(o.chunk_size);
  auto data = seg.allocate_bytes(o.chunk_count * stride, kCacheLine);
  if (!data) return data.error();
  const std::uint64_t free_cap = std::bit_ceil(std::uint64_t{o.chunk_count} < 2 ? 2 : o.chunk_count);
  auto free_ring = MpmcRing::place(seg, {free_cap, 0});
  if (!free_ring) return free_ring.error();

  ChunkPoolShared* s = seg.at(*ref);
  s->chunk_count = o.chunk_count;
  s->chunk_size = o.chunk_size;
  s->chunk_stride = stride;
  s->headers_offset = headers->offset;
  s->data_offset = *data;
  s->ring_offsets[0] = free_ring->offset;
  s->ring_count = 1;
  for (auto cap : o.ring_capacities) {
    auto r = MpmcRing::place(seg, {cap, 0});
    if (!r) return r.error();
    s->ring_offsets[s->ring_count++] = r->offset;
  }

  // Every chunk starts in the free ring at position i: cell i = FULL(lap 0, i), owner = QUEUED(0, i).
  // Relaxed stores: the segment's magic (R-SEG) publishes all of it.
  auto ring = MpmcRing::attach(seg, *free_ring);
  if (!ring) return ring.error();
  ChunkHeader* h = seg.at(*headers, o.chunk_count);
  for (std::uint32_t i = 0; i < o.chunk_count; ++i) {
    h[i].owner.store(queued(0, i), std::memory_order_relaxed);
    h[i].pusher.store(0, std::memory_order_relaxed);
    h[i].queued_pos.store(i, std::memory_order_relaxed);
    h[i].last_ring.store(kNoRing, std::memory_order_relaxed);
    ring->cell(i).store(MpmcRing::full(ring->lap(i), i), std::memory_order_relaxed);
  }
  ring->shared()->tail.store(o.chunk_count, std::memory_order_relaxed);
  return *ref;
}

Result<ChunkPool> ChunkPool::attach(const Segment& seg, Ref<ChunkPoolShared> ref) {
  auto bad = [&](const std::string& what) {
    return Error(Errc::truncated, "chunk pool in segment \"" + seg.name() + "\": " + what);
  };
  if (!ref || !seg.in_bounds(ref.offset, sizeof(ChunkPoolShared)) || ref.offset % kCacheLine != 0)
    return bad("offset " + std::to_string(ref.offset) + " is outside the mapping or misaligned");
  ChunkPoolShared* s = seg.at(ref);
  if (auto ok = check_options({static_cast<std::uint32_t>(s->chunk_count), s->chunk_size, {}});
      !ok || s->chunk_count > (1u << 31))
    return bad("bad geometry: " + (ok ? std::string("chunk count") : ok.error().message()));
  if (s->chunk_stride != chunk_stride(s->chunk_size)) return bad("bad chunk stride");
  if (s->ring_count < 1 || s->ring_count > kMaxPoolRings)
    return bad("bad ring count " + std::to_string(s->ring_count));
  if (s->headers_offset % kHwLine != 0 ||
      !seg.in_bounds(s->headers_offset, s->chunk_count * sizeof(ChunkHeader)))
    return bad("chunk headers outside the mapping");
  if (!seg.in_bounds(s->data_offset, s->chunk_count * s->chunk_stride))
    return bad("chunk data outside the mapping");
  ChunkPool p;
  p.s_ = s;
  p.headers_ = seg.at(Ref<ChunkHeader>{s->headers_offset}, s->chunk_count);
  p.data_ = seg.base() + s->data_offset;
  p.stride_ = s->chunk_stride;
  p.chunk_size_ = s->chunk_size;
  p.count_ = static_cast<std::uint32_t>(s->chunk_count);
  p.ring_count_ = s->ring_count;
  for (std::uint32_t i = 0; i < s->ring_count; ++i) {
    auto r = MpmcRing::attach(seg, Ref<MpmcRingShared>{s->ring_offsets[i]});
    if (!r) return r.error();
    p.rings_[i] = *r;
  }
  if (p.rings_[0].capacity() < s->chunk_count) return bad("free ring smaller than the chunk count");
  return p;
}

void ChunkPool::release(std::uint32_t idx) noexcept {
  SHMBUS_ASSERT(idx < count_);
  // A free chunk names no message ring: an allocator killed right after its claim (before try_pop()
  // resets the header) must not make reclaim(redeliver) publish this chunk's old message again.
  // Relaxed: we hold the chunk; R5 in the push below publishes it.
  headers_[idx].last_ring.store(kNoRing, std::memory_order_relaxed);
  // The free ring holds every chunk, so it is never full.
  const RingStatus st = push_stamped(0, idx, identity());
  SHMBUS_ASSERT(st == RingStatus::ok);
}

RingStatus ChunkPool::try_push(std::uint32_t ring, std::uint32_t idx) noexcept {
  SHMBUS_ASSERT(ring >= 1 && ring < ring_count_ && idx < count_);
  // Name the ring now, while we hold the chunk: a consumer killed right after claiming it (before
  // try_pop() records the ring) leaves it OWNED(dead) with this ring, so reclaim(redeliver) can put the
  // unacknowledged message back. Relaxed: published by R5 in the push.
  headers_[idx].last_ring.store(ring, std::memory_order_relaxed);
  return push_stamped(ring, idx, identity());
}

RingStatus ChunkPool::push_stamped(std::uint32_t ring, std::uint32_t idx, OwnerId self) noexcept {
  ChunkHeader& h = headers_[idx];
  // Relaxed: published by R5 below.
  h.pusher.store(self.value, std::memory_order_relaxed);
  // MpmcRing::push_with with the owner word as the claim. `mine` is what the owner word holds while we
  // still have the chunk: OWNED(self), then our latest stamp. Every rewrite is a CAS from it, never a plain
  // store: should a popper ever take the chunk through a stale stamp (the 48-bit position ABA, see the
  // header), the failed CAS tells us the chunk is handed over.
  struct Hooks {
    ChunkPool& pool;
    ChunkHeader& h;
    std::uint32_t ring;
    std::uint64_t self;
    std::uint64_t mine;
    bool stamp(std::uint64_t t) noexcept {
      h.queued_pos.store(t, std::memory_order_relaxed);
      // R5: pairs with A5 in try_pop(): a popper that sees idx in cell t sees this stamp.
      if (!h.owner.compare_exchange_strong(mine, queued(ring, t), std::memory_order_release,
                                           std::memory_order_relaxed))
        return false;  // taken through an earlier stamp: it is in a consumer's hands
      mine = queued(ring, t);
      SHMBUS_FAULT_POINT("pool.push.after_stamp");
      return true;  // then R3, the cell CAS; should it fail the stamp is rewritten for the next position
    }
    void pushed() noexcept { SHMBUS_FAULT_POINT("pool.push.after_cas"); }
    // The ring looks full and cell p holds v. If that chunk was claimed already (its popper died between
    // the owner CAS and emptying the cell, or is about to empty it), the position is popped: the ring
    // empties the cell and moves head instead of reporting a full ring. Otherwise a popper's death would
    // make a full free ring (release() must never see one) or a spurious "full".
    bool holds(std::uint32_t v, std::uint64_t p) noexcept {
      return v < pool.count_ &&
             pool.headers_[v].owner.load(std::memory_order_acquire) == queued(ring, p);  // A5
    }
    // Full: the caller keeps the chunk. Release: as R5, for whoever reads the owner word next.
    RingStatus full() noexcept {
      if (mine != self &&
          !h.owner.compare_exchange_strong(mine, self, std::memory_order_release, std::memory_order_relaxed))
        return RingStatus::ok;  // taken through an earlier stamp, as above
      return RingStatus::full;
    }
  } hooks{*this, h, ring, self.value, h.owner.load(std::memory_order_relaxed)};
  SHMBUS_ASSERT(hooks.mine == self.value);  // only the holder may push a chunk
  return rings_[ring].push_with(idx, hooks);
}

RingStatus ChunkPool::try_pop(std::uint32_t ring, std::uint32_t& idx) noexcept {
  SHMBUS_ASSERT(ring < ring_count_);
  // MpmcRing::pop_with with the owner word as the claim: the hand-over is the owner CAS, and the cell is
  // then emptied by whoever gets there first.
  struct Hooks {
    ChunkPool& pool;
    std::uint32_t ring;
    std::uint64_t self;
    MpmcRing::Claim claim(std::uint32_t v, std::uint64_t h) noexcept {
      if (v >= pool.count_) return MpmcRing::Claim::stale;  // a damaged value: empty the cell
      ChunkHeader& ch = pool.headers_[v];
      std::uint64_t o = ch.owner.load(std::memory_order_acquire);  // A5: pairs with R5.
      // Not stamped for this cell: taken already by a popper that has not emptied the cell (or died).
      if (o != queued(ring, h)) return MpmcRing::Claim::stale;
      SHMBUS_FAULT_POINT("pool.pop.before_claim");
      // R6: the hand-over. acq_rel: we see the pusher's payload; the reclaimer and the next pusher see ours.
      if (!ch.owner.compare_exchange_strong(o, self, std::memory_order_acq_rel)) return MpmcRing::Claim::lost;
      SHMBUS_FAULT_POINT("pool.pop.after_claim");
      return MpmcRing::Claim::taken;
    }
    void popped() noexcept {}
  } hooks{*this, ring, identity().value};
  std::uint32_t v;
  const RingStatus st = rings_[ring].pop_with(v, hooks);
  if (st != RingStatus::ok) return st;
  // Relaxed: we hold the chunk; the next hand-over (R5/R6) publishes these.
  ChunkHeader& ch = headers_[v];
  if (ring == 0) {
    ch.flags.store(0, std::memory_order_relaxed);
    ch.last_ring.store(kNoRing, std::memory_order_relaxed);
    ch.deliveries.store(0, std::memory_order_relaxed);
    ch.size.store(0, std::memory_order_relaxed);
  } else {
    ch.last_ring.store(ring, std::memory_order_relaxed);
    ch.deliveries.fetch_add(1, std::memory_order_relaxed);
  }
  idx = v;
  return RingStatus::ok;
}

bool ChunkPool::cell_holds(std::uint32_t ring, std::uint64_t pos, std::uint32_t idx) const noexcept {
  const MpmcRing& r = rings_[ring];
  return r.cell(pos).load(std::memory_order_acquire) == MpmcRing::full(r.lap(pos), idx);
}

bool ChunkPool::in_ring(std::uint32_t idx) const noexcept {
  const ChunkHeader& h = headers_[idx];
  const std::uint64_t o = h.owner.load(std::memory_order_acquire);
  if (!is_queued(o) || queued_ring(o) >= ring_count_) return false;
  const std::uint64_t pos = h.queued_pos.load(std::memory_order_relaxed);
  return (pos & kPosMask) == (o & kPosMask) && cell_holds(queued_ring(o), pos, idx);
}

ReclaimReport ChunkPool::reclaim(OwnerId dead, Policy policy) {
  ReclaimReport rep;
  const OwnerId self = identity();
  SHMBUS_ASSERT(dead.valid() && !(dead == self));
  for (std::uint32_t idx = 0; idx < count_; ++idx) {
    ChunkHeader& h = headers_[idx];
    std::uint64_t o = h.owner.load(std::memory_order_acquire);  // A6: pairs with R5/R6.
    std::uint32_t target = kNoRing;  // where a taken chunk goes: a message ring, or free
    if (o == dead.value) {
      if (!h.owner.compare_exchange_strong(o, self.value, std::memory_order_acq_rel)) continue;
      const std::uint32_t last = h.last_ring.load(std::memory_order_relaxed);
      if (policy == Policy::redeliver && last != kNoRing && last != 0 && last < ring_count_) target = last;
    } else if (is_queued(o) && h.pusher.load(std::memory_order_relaxed) == dead.value) {
      const std::uint32_t ring = queued_ring(o);
      const std::uint64_t pos = h.queued_pos.load(std::memory_order_relaxed);
      if (ring >= ring_count_) continue;  // damaged; census() reports it
      // A stamp whose position disagrees with queued_pos belongs to an attempt the dead pusher had
      // already abandoned (its CAS failed), so the chunk is in no cell. Otherwise look at the cell.
      if ((pos & kPosMask) == (o & kPosMask) && cell_holds(ring, pos, idx)) continue;  // pushed: in the ring
      if (!h.owner.compare_exchange_strong(o, self.value, std::memory_order_acq_rel)) continue;
      ++rep.unpushed;
      if (policy == Policy::redeliver && ring != 0) target = ring;
    } else {
      continue;
    }
    SHMBUS_FAULT_POINT("pool.reclaim.after_take");
    if (target != kNoRing) {
      h.flags.fetch_or(kChunkRedelivered, std::memory_order_relaxed);  // published by R5 in the push
      if (push_stamped(target, idx, self) == RingStatus::ok) {
        ++rep.redelivered;
        s_->redelivered.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
      } else {
        rep.held.push_back(idx);
      }
    } else {
      release(idx);
      ++rep.freed;
      s_->reclaimed.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
    }
  }
  return rep;
}

PoolCensus ChunkPool::census() const {
  PoolCensus c;
  // The positions that hold each chunk according to the rings: (ring, pos) of every FULL cell whose
  // chunk's stamp names that cell.
  std::vector<int> seen(count_, 0);
  for (std::uint32_t ri = 0; ri < ring_count_; ++ri) {
    const MpmcRing& r = rings_[ri];
    std::uint64_t head = r.shared()->head.load(std::memory_order_acquire);
    // A popper that died before advancing head leaves it behind positions already popped; start at the
    // oldest position not popped, or a chunk pushed since into that cell's next lap would be missed.
    for (std::uint64_t k = 0;
         k < r.capacity() && MpmcRing::popped_at(r.cell(head).load(std::memory_order_acquire), r.lap(head));
         ++k)
      ++head;
    for (std::uint64_t k = 0; k < r.capacity(); ++k) {
      const std::uint64_t pos = head + k;
      const std::uint64_t cur = r.cell(pos).load(std::memory_order_acquire);
      if (!MpmcRing::is_full(cur)) continue;
      const auto v = static_cast<std::uint32_t>(cur);
      if (v >= count_) {
        c.violations.push_back("ring " + std::to_string(ri) + " holds chunk index " + std::to_string(v) +
                               " beyond the pool's " + std::to_string(count_));
        continue;
      }
      const std::uint64_t o = headers_[v].owner.load(std::memory_order_acquire);
      if (o == queued(ri, pos) && MpmcRing::lap_of(cur) == r.lap(pos)) {
        ++seen[v];
      } else if (is_queued(o) && queued_ring(o) == ri && (o & kPosMask) == (pos & kPosMask)) {
        c.violations.push_back("ring " + std::to_string(ri) + " cell at " + std::to_string(pos) +
                               " holds chunk " + std::to_string(v) + " from another lap");
      }
      // Otherwise the chunk was claimed and the cell awaits the next popper's clean-up: not a place.
    }
  }
  for (std::uint32_t idx = 0; idx < count_; ++idx) {
    const std::uint64_t o = headers_[idx].owner.load(std::memory_order_acquire);
    if (is_queued(o)) {
      if (seen[idx] != 1) {
        c.violations.push_back("chunk " + std::to_string(idx) + " is stamped queued in ring " +
                               std::to_string(queued_ring(o)) + " at " + std::to_string(o & kPosMask) +
                               " but found in " + std::to_string(seen[idx]) + " cells");
        continue;
      }
      if (queued_ring(o) == 0)
        ++c.free;
      else
        ++c.queued;
    } else {
      if (seen[idx] != 0)
        c.violations.push_back("chunk " + std::to_string(idx) + " is owned and also queued");
      const OwnerId id{o};
      if (!id.valid() || liveness(id) == Liveness::dead) {
        c.violations.push_back("chunk " + std::to_string(idx) + " is held by pid " +
                               std::to_string(id.pid()) + " (start " + std::to_string(id.start()) +
                               "), which is not running");
        continue;
      }
      ++c.owned;
    }
  }
  return c;
}

}  // namespace shmbus
