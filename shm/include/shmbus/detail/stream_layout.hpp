// The shared layout of a stream topic: publisher slots, subscriber slots, and one *connection* per
// (publisher, subscriber) pair. Plain data with its static_asserts; what a client does with it is in
// stream_port.hpp (the user half), what the broker does in stream_supervisor.hpp (the supervisor half).
//
// A connection carries a publisher's messages to one subscriber through an SPSC submission ring, and
// the chunks the subscriber is done with back through an SPSC completion ring:
//
//   publisher ---- submission ring (depth slots of kStreamSlotStride bytes) ----> subscriber
//            <--- completion ring (comp_depth cells of 8 bytes: chunk indices) ---
//
// A small message travels *inline*: its bytes (and attributes) are in the submission slot itself, one
// or two cache lines, and the subscriber copies them out. A larger message, or a zero-copy loan, travels
// in a chunk of the topic's ChunkPool: the slot names the chunk, every subscriber the publisher reaches
// gets the same chunk (no per-subscriber copy), and each gives it back through its completion ring. The
// publisher alone counts the references of its chunks (a process-local counter per chunk), so fan-out
// has no atomic read-modify-write per subscriber.
//
// Who writes what:
//  - the broker: slot owner/state words, connection state and the connection tables, the topic's
//    generation counter (bumped after every change; clients re-read their tables when it moves);
//  - the publisher of a connection: submission slots, `head`, `comp_tail`, `dropped`, `closed`;
//  - the subscriber of a connection: `tail`, completion cells, `comp_head`, and in its SubscriberSlot the
//    held bits and the taking/releasing records that let the broker return its chunks after a SIGKILL.
//    When the broker closes the slot of a subscriber that lives on (it did not ask: a socket closed, a
//    slot nobody claimed after a restart), the subscriber stops pushing completions once it acks the
//    change; a sample it still holds, let go of later, sets its *released* bit (StreamView::rel_of) and
//    the broker gives that chunk back on the closing connection. Until then the chunk stays out: a live
//    sample is never handed to the publisher again.
//
// Chunk ownership. A stream publisher allocates chunks under its *slot identity* (slot_owner(i) below),
// not its process identity: the chunks of publisher slot i are exactly those whose owner word says so,
// whether in the publisher's local cache, loaned, or out in connections. Generic reclaim (dead_owners,
// ChunkPool::reclaim) leaves such chunks alone; the stream supervisor frees them once slot i is retired
// (its publisher left or died) and no subscriber refers to them any more.
//
// Memory ordering (named as in spsc_ring.hpp; the partner is at the other end):
//  S1 (publisher commit): slot.seq.store(pos, release) after the slot's bytes. A subscriber's
//     seq.load(acquire) == pos (S1') sees them.
//  S2 (subscriber): tail.store(pos + 1, release) after its reads of the slot; the publisher's
//     tail.load(acquire) (S2') overwrites a slot only after them.
//  S3 (overwrite, drop-oldest, inline slots only): the publisher stores kSlotBusy with relaxed, issues a
//     release fence, rewrites the slot, then commits with S1. A subscriber copies the slot, issues an
//     acquire fence, and re-reads seq (S3'): unchanged means the copy is whole (a seqlock).
//  C1 (subscriber push of a completion): cell.store((pos << 32) | chunk, release); the publisher's
//     cell.load(acquire) (C1') sees the chunk as returned. C2: comp_tail store (release) / load (acquire)
//     as S2 for the completion ring.
//  G1 (broker): tables and states written, then generation.fetch_add(release); clients load generation
//     with acquire (G1') before they read the tables.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shmbus/config.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/owner.hpp"

namespace shmbus::detail {

// ---- submission slots ----

inline constexpr std::size_t kStreamSlotStride = 128;  // two hardware lines; a small message uses one
inline constexpr std::size_t kSlotPair = 128;          // slots (and connections) start at this alignment
inline constexpr std::uint64_t kSlotBusy = ~0ULL;      // seq while a publisher overwrites the slot (S3)

struct StreamSlotHeader {
  std::atomic<std::uint64_t> seq;  // the ring position of the message (S1/S1'), or kSlotBusy
  std::uint32_t size;              // payload bytes
  std::uint16_t flags;             // kSlotInline / kSlotChunk, kSlotStamped
  std::uint16_t attrs_size;        // inline: attribute bytes after the payload
  std::uint64_t pub_seq;           // the publisher's sequence number (a gap is what the subscriber missed)
};
static_assert(sizeof(StreamSlotHeader) == 24);
inline constexpr std::uint16_t kSlotInline = 1;   // payload (and attributes) follow the header
inline constexpr std::uint16_t kSlotChunk = 2;    // a chunk index follows the header (StreamChunkRef)
inline constexpr std::uint16_t kSlotStamped = 4;  // stamped: inline, an 8-byte timestamp precedes the
                                                  // payload; chunk, the MessageHeader's timestamp_ns

struct StreamChunkRef {
  std::uint32_t chunk;
  std::uint32_t reserved;
};

// Inline room: what follows the header in a slot.
inline constexpr std::size_t kStreamInlineRoom = kStreamSlotStride - sizeof(StreamSlotHeader);  // 104

// ---- completion cells ----
// A cell holds (low 32 bits of its position) << 32 | chunk index. Initially position - comp_depth, i.e.
// "written in the previous lap".
inline constexpr std::uint64_t completion_cell(std::uint64_t pos, std::uint32_t chunk) {
  return (pos << 32) | chunk;
}
inline constexpr bool completion_at(std::uint64_t cell, std::uint64_t pos) {
  return static_cast<std::uint32_t>(cell >> 32) == static_cast<std::uint32_t>(pos);
}

// ---- connections ----

inline constexpr std::uint32_t kConnFree = 0;
inline constexpr std::uint32_t kConnActive = 1;
inline constexpr std::uint32_t kConnClosing = 2;  // its subscriber left or died: the publisher finishes
inline constexpr std::uint32_t kConnOrphan = 3;   // its publisher left or died: the subscriber drains it
inline constexpr std::uint32_t kConnDrained = 4;  // an orphan its subscriber emptied, out of its table:
                                                  // freed once the subscriber acked that generation
inline constexpr std::uint32_t kNoConn = 0xffffffffu;
inline constexpr std::uint64_t kNoSeq = ~0ULL;

struct alignas(kCacheLine) ConnectionShared {
  // Line 0: the broker's.
  std::atomic<std::uint32_t> state;  // kConn*
  std::uint32_t pub;                 // publisher slot
  std::uint32_t sub;                 // subscriber slot
  std::uint32_t reserved0;
  std::atomic<std::uint64_t> closed_at_gen;  // the generation at which it started closing
  // The broker's step while it gives back a gone subscriber's chunk (StreamSupervisor::return_refs):
  // the completion position it writes, chunk + 1 (0: none), and where the chunk was counted. A broker
  // killed inside the step leaves it here, and the next one redoes it whole rather than giving the chunk
  // back twice.
  std::atomic<std::uint64_t> ret_pos;
  std::atomic<std::uint64_t> ret_chunk;
  std::atomic<std::uint64_t> ret_entry;  // the unread entry's position it takes over; kNoSeq: a held chunk
  std::uint8_t pad0[kCacheLine - 48];
  // Line 1: the publisher's.
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // next position to write (after commit; relaxed)
  std::atomic<std::uint64_t> comp_tail;                 // next completion to read (C2)
  std::atomic<std::uint64_t> dropped;                   // messages the subscriber missed (statistics)
  std::atomic<std::uint32_t> closed;                    // 1: a closing connection is done (release)
  std::uint32_t reserved1;
  // The publisher's sequence number before its first message on this connection (kNoSeq until it
  // connects), written before that message's commit (S1 orders it): what a subscriber's first message
  // says it missed is the gap to it.
  std::atomic<std::uint64_t> start_seq;
  std::uint8_t pad1[kCacheLine - 40];
  // Line 2: the subscriber's.
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // next position to read (S2)
  std::atomic<std::uint64_t> comp_head;                 // next completion to write (relaxed; recovery)
  std::uint8_t pad2[kCacheLine - 16];
  // Line 3: nothing, so that the slots after it start on a 128-byte pair (see kSlotPair).
  std::uint8_t pad3[kCacheLine];
};
static_assert(sizeof(ConnectionShared) == 4 * kCacheLine);
static_assert(sizeof(ConnectionShared) % kSlotPair == 0);
static_assert(offsetof(ConnectionShared, head) == kCacheLine);
static_assert(offsetof(ConnectionShared, tail) == 2 * kCacheLine);
static_assert(std::is_standard_layout_v<ConnectionShared>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// ---- publisher slots ----

inline constexpr std::uint32_t kPubFree = 0;
inline constexpr std::uint32_t kPubActive = 1;
inline constexpr std::uint32_t kPubRetired = 2;  // its publisher left or died; chunks may still be out

struct alignas(kCacheLine) PublisherSlot {
  // Line 0: the broker's.
  std::atomic<std::uint64_t> owner;  // OwnerId of the publishing process; 0 when free
  std::atomic<std::uint32_t> state;  // kPub*
  std::uint32_t index;               // fixed at creation
  std::atomic<std::uint64_t> port;   // the client's port id
  std::atomic<std::uint64_t> id;     // the publisher id samples carry
  std::uint8_t pad0[kCacheLine - 32];
  // Line 1: the publisher's.
  alignas(kCacheLine) std::atomic<std::uint64_t> published;  // messages published (statistics)
  std::atomic<std::uint64_t> seen_generation;                // the generation its tables reflect (ack)
  std::atomic<std::uint64_t> seq;                            // its last sequence number (a successor
                                                             // of the same process continues it)
  std::uint8_t pad1[kCacheLine - 24];
  EventCountShared space;  // the publisher waits here for room (block policy); subscribers notify it
};
static_assert(sizeof(PublisherSlot) == 3 * kCacheLine);
static_assert(offsetof(PublisherSlot, space) == 2 * kCacheLine);
static_assert(std::is_standard_layout_v<PublisherSlot>);

// The owner word of a chunk that belongs to publisher slot i: bit 62 marks a slot (no process has such
// an id: pids are below 2^22), so generic reclaim and liveness never act on it.
inline constexpr std::uint64_t kSlotOwnedBit = 1ULL << 62;
inline constexpr OwnerId slot_owner(std::uint32_t slot) {
  return OwnerId{kSlotOwnedBit | slot};
}
inline constexpr bool is_slot_owner(std::uint64_t owner_word) {
  return (owner_word >> 62) == 1;  // bit 62 set, bit 63 (queued) clear
}

// ---- subscriber recovery records (in the subscriber's line of its SubscriberSlot) ----
// taking: the subscriber is about to hold the chunk of the slot at `pos` of connection `conn`.
// releasing: it is about to give back `chunk` at completion position `pos` of connection `conn`.
// `cc` = (conn + 1) << 32 | chunk, 0 when there is no such step in progress.
struct StreamStep {
  std::atomic<std::uint64_t> pos;
  std::atomic<std::uint64_t> cc;
};
static_assert(sizeof(StreamStep) == 16);
inline constexpr std::uint64_t step_cc(std::uint32_t conn, std::uint32_t chunk) {
  return (static_cast<std::uint64_t>(conn + 1) << 32) | chunk;
}

}  // namespace shmbus::detail
