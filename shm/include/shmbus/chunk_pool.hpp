// ChunkPool: fixed-size chunks in a segment, handed between processes through MpmcRings, with an owner
// word per chunk so that every chunk is, at every moment, in exactly one place: a ring (the free ring
// or a message ring) or the hands of one live process. reclaim(dead) restores that after a SIGKILL.
//
// Owner word (64 bits, in the chunk's header line):
//   OWNED(id)       bit 63 = 0, the OwnerId of the holder (never 0).
//   QUEUED(r, p)    bit 63 = 1, ring id r (15 bits) << 48 | position p mod 2^48: the chunk sits (or is
//                   about to sit) at position p of the pool's ring r. Ring 0 is the free ring.
// The owner word, not the ring, decides who has a chunk. The rings run MpmcRing's one algorithm
// (push_with / pop_with, mpmc_ring.hpp) with hooks that stamp and claim the owner word:
//
//   push(r, idx)  (holder H): header.pusher = H, header.queued_pos = t; owner = QUEUED(r, t) (release);
//                 then the ring's cell CAS at t (the MpmcRing push step). If that CAS fails, retry with
//                 the next t (rewriting the stamp); if the ring is full, owner = OWNED(H) again. Every
//                 rewrite is a CAS from H's previous value, so H never overwrites a hand-over. A pusher
//                 that finds the oldest cell still FULL with a chunk no longer stamped for it (its
//                 claimer died before emptying the cell) empties it and moves head, as a popper does.
//   pop(r)        (taker T): read cell h = FULL(lap h, idx); CAS owner QUEUED(r, h) -> OWNED(T)  <- the
//                 hand-over; then empty the cell and advance head. A popper that finds the cell full but
//                 the owner no longer QUEUED(r, h) knows the chunk was taken and helps empty the cell.
//   allocate()  = pop(0), release(idx) = push(0, idx).
//
// Why this is exact under SIGKILL at any step (each case is a fault point in the tests):
//  - H killed before the owner store: the chunk is OWNED(H): reclaim(H) frees (or redelivers) it.
//  - H killed between the stamp and the cell CAS: the owner says QUEUED(r, t), pusher = H, but cell t does
//    not hold idx; nobody else can put it there (H is dead), so reclaim(H) takes it.
//  - H killed after the cell CAS: the chunk is in the ring; the next pusher advances tail.
//  - T killed after the owner CAS: the chunk is OWNED(T) (reclaimed), and the next popper empties the cell.
//  - T killed before it: nothing changed.
//  The stamp names the ring and the position, so a slow popper whose cell was emptied long ago cannot
//  take a chunk that has since been queued elsewhere (the ABA the stamp exists for): its CAS expects
//  QUEUED(r, h) for a position h that is in the past. An OwnerId is never reused, so reclaim's CAS from
//  OWNED(dead) cannot hit a new holder. The stamp keeps 48 bits of the position: a stale CAS would need a
//  popper stalled over 2^48 operations of one ring. The lap bound of MpmcRing applies as well.
//
// Reclaim(dead, policy): for each chunk, OWNED(dead) -> taken by the reclaimer, then freed, or, with
// Policy::redeliver and a message ring in header.last_ring, pushed back there flagged kRedelivered;
// QUEUED(r, p) with pusher == dead and cell p not holding it -> taken and freed (or pushed on to r with
// redeliver: the message was complete, only its publication was cut short). A reclaimer killed midway
// holds what it took as OWNED(itself) or as its own pushes, which a reclaim of the reclaimer returns.
// Reclaim must only be called for a process that is dead (the broker knows from its pidfd).
//
// Memory ordering:
//  R5 (push: owner.store QUEUED, release) and R3 (the cell CAS, acq_rel) pair with A3 (pop's cell load)
//     and A5 (pop's owner load, acquire): a popper that sees the cell sees the stamp, pusher and payload.
//  R6 (pop: owner CAS to OWNED, acq_rel): pairs with A6 (reclaim's owner load, acquire) and with the next
//     push's release, so the payload written by a holder is published by the ring step that follows.
//  header.pusher / queued_pos / last_ring / size / flags: relaxed atomics, each written by the holder
//     before a release (R5, R6) and read after the matching acquire.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "shmbus/config.hpp"
#include "shmbus/mpmc_ring.hpp"
#include "shmbus/owner.hpp"
#include "shmbus/result.hpp"
#include "shmbus/segment.hpp"

namespace shmbus {

inline constexpr std::uint32_t kMaxPoolRings = 64;     // ring ids 0 (free) .. 63
inline constexpr std::uint32_t kNoRing = 0xffffffffu;  // header.last_ring of a free or just-allocated chunk
inline constexpr std::uint32_t kChunkRedelivered = 1u << 0;  // header.flags

// One per chunk, alone on its 64-byte line: allocation traffic on one chunk does not disturb its
// neighbours.
struct alignas(kHwLine) ChunkHeader {
  std::atomic<std::uint64_t> owner;       // OWNED(id) or QUEUED(r, p): see above
  std::atomic<std::uint64_t> pusher;      // OwnerId that wrote the current QUEUED stamp
  std::atomic<std::uint64_t> queued_pos;  // the full 64-bit position of that stamp
  std::atomic<std::uint32_t> last_ring;   // the message ring it was last pushed to or popped from;
                                          // kNoRing while free and until its holder pushes it
  std::atomic<std::uint32_t> flags;       // kChunkRedelivered, ...
  std::atomic<std::uint32_t> size;        // payload bytes, for the message layer
  std::atomic<std::uint32_t> deliveries;  // pops from message rings since the chunk was allocated
  std::uint8_t pad[kHwLine - 40];
};
static_assert(sizeof(ChunkHeader) == kHwLine);
static_assert(offsetof(ChunkHeader, owner) == 0);
static_assert(offsetof(ChunkHeader, last_ring) == 24);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::is_standard_layout_v<ChunkHeader>);

struct ChunkPoolShared {
  std::uint64_t chunk_count;
  std::uint64_t chunk_size;      // payload bytes
  std::uint64_t chunk_stride;    // bytes between chunks, a multiple of 64
  std::uint64_t headers_offset;  // ChunkHeader[chunk_count]
  std::uint64_t data_offset;     // chunk_count * chunk_stride bytes
  std::uint32_t ring_count;      // rings placed, the free ring included
  std::uint32_t reserved;
  std::uint64_t ring_offsets[kMaxPoolRings];                 // Ref<MpmcRingShared> of each ring id
  alignas(kCacheLine) std::atomic<std::uint64_t> reclaimed;  // chunks returned by reclaim (stats)
  std::atomic<std::uint64_t> redelivered;                    // chunks pushed back by reclaim (stats)
  std::uint8_t pad[kCacheLine - 16];
};
static_assert(offsetof(ChunkPoolShared, ring_offsets) == 48);
static_assert(offsetof(ChunkPoolShared, reclaimed) % kCacheLine == 0);
static_assert(std::is_standard_layout_v<ChunkPoolShared>);

struct ChunkPoolOptions {
  std::uint32_t chunk_count = 256;
  std::uint64_t chunk_size = 4096;
  // Capacities of the message rings 1..n (each a power of two). The free ring is sized to chunk_count.
  std::vector<std::uint64_t> ring_capacities;
};

// What reclaim() did.
struct ReclaimReport {
  std::uint64_t freed = 0;          // chunks the dead process held, back in the free ring
  std::uint64_t redelivered = 0;    // chunks pushed back to their message ring
  std::uint64_t unpushed = 0;       // of those: chunks whose push the dead process did not finish
  std::vector<std::uint32_t> held;  // taken for redelivery but the ring was full: now OWNED(caller)
};

// The result of check_invariant(): where every chunk is. Only meaningful while nobody operates on the pool.
struct PoolCensus {
  std::uint64_t free = 0;               // in ring 0
  std::uint64_t queued = 0;             // in message rings
  std::uint64_t owned = 0;              // held by live processes
  std::vector<std::string> violations;  // empty when the invariant holds
};

class ChunkPool {
 public:
  enum class Policy { free, redeliver };

  static std::size_t footprint(const ChunkPoolOptions& options);
  static Result<Ref<ChunkPoolShared>> place(Segment& segment, const ChunkPoolOptions& options);
  static Result<ChunkPool> attach(const Segment& segment, Ref<ChunkPoolShared> ref);

  ChunkPool() = default;

  // The OwnerId this handle stamps on what it takes and pushes. Unset (the default), each operation
  // stamps OwnerId::self(), which a forked child recomputes; a client of a broker sets the identity the
  // broker gave it at hello (its pid in the broker's pid namespace, see owner.hpp).
  void set_identity(OwnerId id) noexcept { identity_ = id; }
  OwnerId identity() const noexcept { return identity_.value != 0 ? identity_ : OwnerId::self(); }

  // ---- hot path (never allocates, never blocks, never throws) ----
  // Take a free chunk: OWNED(self). RingStatus::empty when none is free.
  RingStatus try_allocate(std::uint32_t& idx) noexcept { return try_pop(0, idx); }
  // Give back a chunk the caller holds.
  void release(std::uint32_t idx) noexcept;
  // Hand a held chunk to message ring `ring` (1..ring_count()-1). RingStatus::full: still held.
  RingStatus try_push(std::uint32_t ring, std::uint32_t idx) noexcept;
  // Take the oldest chunk of ring `ring`: OWNED(self). RingStatus::empty when there is none.
  RingStatus try_pop(std::uint32_t ring, std::uint32_t& idx) noexcept;

  std::byte* data(std::uint32_t idx) const { return data_ + static_cast<std::uint64_t>(idx) * stride_; }
  ChunkHeader& header(std::uint32_t idx) const { return headers_[idx]; }
  std::uint32_t chunk_count() const { return count_; }
  std::size_t chunk_size() const { return chunk_size_; }
  std::uint32_t ring_count() const { return ring_count_; }
  const MpmcRing& ring(std::uint32_t id) const { return rings_[id]; }
  ChunkPoolShared* shared() const { return s_; }

  // ---- supervision ----
  // Return everything `dead` held or was handing over. Call only once `dead` is known to be dead.
  ReclaimReport reclaim(OwnerId dead, Policy policy = Policy::free);
  // Walk every chunk and every ring; report where each chunk is and any chunk that is not in exactly
  // one place. Only meaningful while no process operates on the pool (tests, a quiescent broker).
  PoolCensus census() const;
  // True when chunk idx sits, complete, in the ring cell its stamp names (its push finished).
  bool in_ring(std::uint32_t idx) const noexcept;

  // Owner-word encoding (public for tests and the broker's stats).
  static constexpr std::uint64_t kQueuedBit = 1ULL << 63;
  static constexpr std::uint64_t kPosMask = (1ULL << 48) - 1;
  static std::uint64_t queued(std::uint32_t ring, std::uint64_t pos) {
    return kQueuedBit | (static_cast<std::uint64_t>(ring) << 48) | (pos & kPosMask);
  }
  static bool is_queued(std::uint64_t owner) { return (owner & kQueuedBit) != 0; }
  static std::uint32_t queued_ring(std::uint64_t owner) {
    return static_cast<std::uint32_t>((owner >> 48) & 0x7fff);
  }

 private:
  RingStatus push_stamped(std::uint32_t ring, std::uint32_t idx, OwnerId self) noexcept;
  bool cell_holds(std::uint32_t ring, std::uint64_t pos, std::uint32_t idx) const noexcept;

  ChunkPoolShared* s_ = nullptr;
  ChunkHeader* headers_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t stride_ = 0;
  std::uint64_t chunk_size_ = 0;
  std::uint32_t count_ = 0;
  std::uint32_t ring_count_ = 0;
  OwnerId identity_{};
  MpmcRing rings_[kMaxPoolRings];
};

}  // namespace shmbus
