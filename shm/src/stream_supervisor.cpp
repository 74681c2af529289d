// The supervisor half of a stream (detail/stream_supervisor.hpp): slots, connections, collection.
#include "shmbus/detail/stream_supervisor.hpp"

#include <bit>
#include <cstring>
#include <vector>

#include "shmbus/fault.hpp"

namespace shmbus::detail {
namespace {

StreamSlotHeader* header_at(std::byte* slot) {
  return reinterpret_cast<StreamSlotHeader*>(slot);
}

std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

}  // namespace

void StreamSupervisor::bump() {
  v_.generation->fetch_add(1, std::memory_order_release);  // G1: tables and states before it
}

bool StreamSupervisor::held(std::uint32_t sub, std::uint32_t chunk) const {
  return (v_.held_of(sub)[chunk / 64].load(std::memory_order_relaxed) >> (chunk % 64)) & 1;
}

void StreamSupervisor::set_held(std::uint32_t sub, std::uint32_t chunk, bool on) {
  // Read-modify-write: a subscriber whose slot we closed while it lives may clear other bits of the same
  // word meanwhile (the chunks of gone publishers it lets go of, StreamSubscriber::let_go). The released
  // bit goes with the held one.
  const std::uint64_t bit = 1ULL << (chunk % 64);
  if (on) {
    v_.held_of(sub)[chunk / 64].fetch_or(bit, std::memory_order_relaxed);
  } else {
    v_.held_of(sub)[chunk / 64].fetch_and(~bit, std::memory_order_relaxed);
    v_.rel_of(sub)[chunk / 64].fetch_and(~bit, std::memory_order_relaxed);
  }
}

bool StreamSupervisor::released(std::uint32_t sub, std::uint32_t chunk) const {
  // Acquire: pairs with the subscriber's release in let_go(): its reads of the chunk are done.
  return (v_.rel_of(sub)[chunk / 64].load(std::memory_order_acquire) >> (chunk % 64)) & 1;
}

bool StreamSupervisor::holds_any(std::uint32_t sub) const {
  for (std::uint64_t w = 0; w < v_.held_words; ++w)
    if ((v_.held_of(sub)[w].load(std::memory_order_relaxed) &
         ~v_.rel_of(sub)[w].load(std::memory_order_acquire)) != 0)
      return true;
  return false;
}

std::uint64_t StreamSupervisor::true_head(std::uint32_t k) const {
  // The publisher stores head after each commit; one killed between the two left it one short.
  std::uint64_t h = v_.conn(k)->head.load(std::memory_order_relaxed);
  for (std::uint64_t i = 0; i < v_.depth; ++i, ++h)
    if (header_at(v_.slot(k, h))->seq.load(std::memory_order_acquire) != h) break;
  return h;
}

std::uint64_t StreamSupervisor::true_comp_head(std::uint32_t k) const {
  std::uint64_t h = v_.conn(k)->comp_head.load(std::memory_order_relaxed);
  for (std::uint64_t i = 0; i < v_.comp_depth; ++i, ++h)
    if (!completion_at(v_.comp_cell(k, h).load(std::memory_order_acquire), h)) break;
  return h;
}

Result<std::uint32_t> StreamSupervisor::alloc_conn(std::uint32_t pub, std::uint32_t sub) {
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    ConnectionShared* cs = v_.conn(k);
    if (cs->state.load(std::memory_order_relaxed) != kConnFree) continue;
    // No client looks at a free connection (it is in no table): start it afresh. Positions start at
    // `depth` so that every slot's seq (its index) reads "not written yet", and likewise the cells.
    for (std::uint64_t p = v_.depth; p < 2 * v_.depth; ++p)
      header_at(v_.slot(k, p))->seq.store(p - v_.depth, std::memory_order_relaxed);
    for (std::uint64_t p = v_.comp_depth; p < 2 * v_.comp_depth; ++p)
      v_.comp_cell(k, p).store(completion_cell(p - v_.comp_depth, 0), std::memory_order_relaxed);
    cs->pub = pub;
    cs->sub = sub;
    cs->closed_at_gen.store(0, std::memory_order_relaxed);
    cs->ret_chunk.store(0, std::memory_order_relaxed);
    cs->head.store(v_.depth, std::memory_order_relaxed);
    cs->comp_tail.store(v_.comp_depth, std::memory_order_relaxed);
    cs->dropped.store(0, std::memory_order_relaxed);
    cs->start_seq.store(kNoSeq, std::memory_order_relaxed);
    cs->closed.store(0, std::memory_order_relaxed);
    cs->tail.store(v_.depth, std::memory_order_relaxed);
    cs->comp_head.store(v_.comp_depth, std::memory_order_relaxed);
    // Relaxed: published to the ports by the generation bump (G1) after the tables.
    cs->state.store(kConnActive, std::memory_order_relaxed);
    return k;
  }
  return Error(Errc::no_space, "topic " + quoted(t_.name()) + " has all its " +
                                   std::to_string(v_.conn_capacity) +
                                   " connections in use (publishers x subscribers, and ones still closing)");
}

void StreamSupervisor::free_conn(std::uint32_t k) {
  ConnectionShared* cs = v_.conn(k);
  const std::uint32_t pub = cs->pub, sub = cs->sub;
  if (pub < v_.max_publishers && sub < v_.max_subscribers) {
    if (v_.pub_conn_at(pub, sub).load(std::memory_order_relaxed) == k)
      v_.pub_conn_at(pub, sub).store(kNoConn, std::memory_order_relaxed);
    if (v_.sub_conn_at(sub, pub).load(std::memory_order_relaxed) == k)
      v_.sub_conn_at(sub, pub).store(kNoConn, std::memory_order_relaxed);
  }
  t_.shared()->dropped.fetch_add(cs->dropped.load(std::memory_order_relaxed), std::memory_order_relaxed);
  cs->state.store(kConnFree, std::memory_order_release);
}

std::optional<std::uint32_t> StreamSupervisor::find_publisher(OwnerId owner, std::uint64_t port) const {
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i) {
    const PublisherSlot& ps = v_.pubs[i];
    if (ps.state.load(std::memory_order_relaxed) == kPubActive &&
        ps.owner.load(std::memory_order_relaxed) == owner.value &&
        ps.port.load(std::memory_order_relaxed) == port)
      return i;
  }
  return std::nullopt;
}

std::optional<std::uint32_t> StreamSupervisor::find_subscriber(OwnerId owner, std::uint64_t port) const {
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j) {
    const SubscriberSlot& ss = v_.subs[j];
    if (ss.state.load(std::memory_order_relaxed) == kSlotActive &&
        ss.owner.load(std::memory_order_relaxed) == owner.value &&
        ss.port.load(std::memory_order_relaxed) == port)
      return j;
  }
  return std::nullopt;
}

Result<std::uint32_t> StreamSupervisor::attach_publisher(OwnerId owner, std::uint64_t port,
                                                         std::uint64_t id) {
  if (auto existing = find_publisher(owner, port)) return *existing;
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i) {
    PublisherSlot& ps = v_.pubs[i];
    if (ps.state.load(std::memory_order_relaxed) != kPubFree) continue;
    ps.owner.store(owner.value, std::memory_order_relaxed);
    ps.port.store(port, std::memory_order_relaxed);
    ps.id.store(id, std::memory_order_relaxed);
    ps.seq.store(0, std::memory_order_relaxed);
    ps.published.store(0, std::memory_order_relaxed);
    ps.seen_generation.store(0, std::memory_order_relaxed);
    EventCount(&ps.space).reset_sleepers();
    if (auto st = connect_to_peers(true, i); !st) {
      ps.owner.store(0, std::memory_order_relaxed);
      return st.error();
    }
    ps.state.store(kPubActive, std::memory_order_relaxed);
    SHMBUS_FAULT_POINT("stream.attach_publisher.before_bump");
    bump();
    return i;
  }
  return Error(Errc::no_space, "topic " + quoted(t_.name()) + " has all its " +
                                   std::to_string(v_.max_publishers) +
                                   " publisher slots taken (raise max_publishers)");
}

Status StreamSupervisor::connect_to_peers(bool publisher, std::uint32_t slot) {
  std::vector<std::uint32_t> made;
  const std::uint32_t peers = publisher ? v_.max_subscribers : v_.max_publishers;
  for (std::uint32_t x = 0; x < peers; ++x) {
    const bool active = publisher ? v_.subs[x].state.load(std::memory_order_relaxed) == kSlotActive
                                  : v_.pubs[x].state.load(std::memory_order_relaxed) == kPubActive;
    if (!active) continue;
    const std::uint32_t i = publisher ? slot : x;
    const std::uint32_t j = publisher ? x : slot;
    auto k = alloc_conn(i, j);
    if (!k) {
      for (std::uint32_t m : made) free_conn(m);
      return k.error();
    }
    made.push_back(*k);
    v_.pub_conn_at(i, j).store(*k, std::memory_order_relaxed);
    v_.sub_conn_at(j, i).store(*k, std::memory_order_relaxed);
  }
  return {};
}

Status StreamSupervisor::reattach_publisher(std::uint32_t slot, OwnerId owner, std::uint64_t port) {
  if (slot >= v_.max_publishers)
    return Error(Errc::invalid_argument,
                 "topic " + quoted(t_.name()) + " has no publisher slot " + std::to_string(slot));
  PublisherSlot& ps = v_.pubs[slot];
  if (ps.state.load(std::memory_order_relaxed) != kPubActive ||
      ps.owner.load(std::memory_order_relaxed) != owner.value)
    return Error(Errc::not_found, "publisher slot " + std::to_string(slot) + " of topic " +
                                      quoted(t_.name()) + " was released while this process was away");
  ps.port.store(port, std::memory_order_relaxed);
  return {};
}

void StreamSupervisor::retire_publisher(std::uint32_t i) {
  if (i >= v_.max_publishers) return;
  PublisherSlot& ps = v_.pubs[i];
  if (ps.state.load(std::memory_order_relaxed) != kPubActive) return;
  ps.state.store(kPubRetired, std::memory_order_relaxed);
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j)
    v_.pub_conn_at(i, j).store(kNoConn, std::memory_order_relaxed);
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    ConnectionShared* cs = v_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st == kConnFree || cs->pub != i) continue;
    if (st == kConnActive && cs->sub < v_.max_subscribers &&
        v_.subs[cs->sub].state.load(std::memory_order_relaxed) == kSlotActive)
      cs->state.store(kConnOrphan, std::memory_order_relaxed);  // its subscriber reads what was sent
    else if (st == kConnActive || st == kConnClosing)
      free_conn(k);  // nobody left at the other end
  }
  bump();
}

Result<std::uint32_t> StreamSupervisor::attach_subscriber(OwnerId owner, std::uint64_t port) {
  if (auto existing = find_subscriber(owner, port)) return *existing;
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j) {
    SubscriberSlot& ss = v_.subs[j];
    if (ss.state.load(std::memory_order_relaxed) != kSlotFree) continue;
    // Only the previous owner's threads can be counted in the slot's EventCount: dead, it left what it
    // left (killed while parked); alive, that thread withdraws its own count.
    if (const OwnerId last{ss.last_owner.load(std::memory_order_relaxed)};
        !last.valid() || liveness(last) == Liveness::dead)
      EventCount(&ss.ec).reset_sleepers();
    std::atomic<std::uint64_t>* bits = v_.held_of(j);
    for (std::uint64_t w = 0; w < 2 * v_.held_words; ++w) bits[w].store(0, std::memory_order_relaxed);
    ss.taking.cc.store(0, std::memory_order_relaxed);
    ss.releasing.cc.store(0, std::memory_order_relaxed);
    ss.seen_generation.store(0, std::memory_order_relaxed);
    ss.delivered.store(0, std::memory_order_relaxed);
    ss.owner.store(owner.value, std::memory_order_relaxed);
    ss.last_owner.store(owner.value, std::memory_order_relaxed);
    ss.port.store(port, std::memory_order_relaxed);
    if (auto st = connect_to_peers(false, j); !st) {
      ss.owner.store(0, std::memory_order_relaxed);
      return st.error();
    }
    ss.state.store(kSlotActive, std::memory_order_relaxed);
    SHMBUS_FAULT_POINT("stream.attach_subscriber.before_bump");
    bump();
    return j;
  }
  return Error(Errc::no_space, "topic " + quoted(t_.name()) + " has all its " +
                                   std::to_string(v_.max_subscribers) +
                                   " subscriber slots taken (raise max_subscribers)");
}

Status StreamSupervisor::reattach_subscriber(std::uint32_t slot, OwnerId owner, std::uint64_t port) {
  if (slot >= v_.max_subscribers)
    return Error(Errc::invalid_argument,
                 "topic " + quoted(t_.name()) + " has no subscriber slot " + std::to_string(slot));
  SubscriberSlot& ss = v_.subs[slot];
  // not_found (never `closed`, which a client reads as its connection closing): subscribe anew.
  if (ss.state.load(std::memory_order_relaxed) != kSlotActive ||
      ss.owner.load(std::memory_order_relaxed) != owner.value)
    return Error(Errc::not_found, "subscriber slot " + std::to_string(slot) + " of topic " +
                                      quoted(t_.name()) +
                                      " was closed while this process was away: subscribe again");
  ss.port.store(port, std::memory_order_relaxed);
  return {};
}

void StreamSupervisor::close_subscriber(std::uint32_t j, bool quiet) {
  if (j >= v_.max_subscribers) return;
  SubscriberSlot& ss = v_.subs[j];
  if (ss.state.load(std::memory_order_relaxed) != kSlotActive) return;
  const std::uint64_t next_gen = v_.generation->load(std::memory_order_relaxed) + 1;
  ss.close_gen.store(next_gen, std::memory_order_relaxed);
  ss.quiet.store(quiet ? 1 : 0, std::memory_order_relaxed);
  ss.state.store(kSlotClosing, std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i)
    v_.sub_conn_at(j, i).store(kNoConn, std::memory_order_relaxed);
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    ConnectionShared* cs = v_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st == kConnFree || cs->sub != j) continue;
    if (st == kConnActive) {
      if (cs->pub < v_.max_publishers && v_.pub_conn_at(cs->pub, j).load(std::memory_order_relaxed) == k)
        v_.pub_conn_at(cs->pub, j).store(kNoConn, std::memory_order_relaxed);
      cs->closed_at_gen.store(next_gen, std::memory_order_relaxed);
      cs->state.store(kConnClosing, std::memory_order_relaxed);
    } else if (st == kConnOrphan || st == kConnDrained) {
      free_conn(k);  // its publisher is gone too: the retired slot's collection frees its chunks
    }
  }
  bump();
  // A publisher blocked for room in one of these connections (overflow block) stops waiting: its
  // predicate sees the connection closing (stream_port.cpp, room()).
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    const ConnectionShared* cs = v_.conn(k);
    if (cs->state.load(std::memory_order_relaxed) == kConnClosing && cs->sub == j &&
        cs->pub < v_.max_publishers)
      EventCount(&v_.pubs[cs->pub].space).notify();
  }
}

bool StreamSupervisor::return_refs(std::uint32_t k, std::uint32_t* returned, bool live) {
  ConnectionShared* cs = v_.conn(k);
  const std::uint32_t j = cs->sub;
  const OwnerId pub_owner = slot_owner(cs->pub);
  SubscriberSlot& ss = v_.subs[j];
  const std::uint32_t chunks = t_.pool().chunk_count();
  // A release the subscriber was killed in: if its completion is out, the held bit is stale.
  if (const std::uint64_t cc = ss.releasing.cc.load(std::memory_order_relaxed);
      (cc >> 32) == std::uint64_t{k} + 1) {
    const auto chunk = static_cast<std::uint32_t>(cc);
    const std::uint64_t h = ss.releasing.pos.load(std::memory_order_relaxed);
    if (chunk < chunks && v_.comp_cell(k, h).load(std::memory_order_acquire) == completion_cell(h, chunk))
      set_held(j, chunk, false);
    ss.releasing.cc.store(0, std::memory_order_relaxed);
  }
  // A step of ours a killed broker left: its chunk is no longer counted where it was (the tail moved past
  // its entry, or its held bit is clear), so the completion must go out, once.
  // The step is redone whole: its take (idempotent: the tail past its entry, the held bit clear), then
  // the completion unless it is out.
  if (const std::uint64_t rc = cs->ret_chunk.load(std::memory_order_relaxed); rc != 0) {
    const std::uint64_t p = cs->ret_pos.load(std::memory_order_relaxed);
    const std::uint64_t entry = cs->ret_entry.load(std::memory_order_relaxed);
    if (rc - 1 < chunks) {
      const auto chunk = static_cast<std::uint32_t>(rc - 1);
      if (entry != kNoSeq && cs->tail.load(std::memory_order_relaxed) == entry)
        cs->tail.store(entry + 1, std::memory_order_relaxed);
      if (held(j, chunk)) set_held(j, chunk, false);
      if (!completion_at(v_.comp_cell(k, p).load(std::memory_order_acquire), p)) {
        v_.comp_cell(k, p).store(completion_cell(p, chunk), std::memory_order_release);
        ++*returned;
      }
    }
    cs->ret_chunk.store(0, std::memory_order_relaxed);
  }
  std::uint64_t pos = true_comp_head(k);
  std::uint64_t comp_tail = cs->comp_tail.load(std::memory_order_acquire);  // C2'
  bool full = false;
  // One step: record it, take the chunk from where it was counted (`take`), write the completion (C1),
  // clear the record. Relaxed record stores: only brokers read them, one at a time, after a restart.
  auto give_back = [&](std::uint32_t chunk, std::uint64_t entry, auto&& take) {
    if (pos - comp_tail >= v_.comp_depth) {
      comp_tail = cs->comp_tail.load(std::memory_order_acquire);
      if (pos - comp_tail >= v_.comp_depth) {
        full = true;
        return false;
      }
    }
    cs->ret_pos.store(pos, std::memory_order_relaxed);
    cs->ret_entry.store(entry, std::memory_order_relaxed);
    cs->ret_chunk.store(std::uint64_t{chunk} + 1, std::memory_order_relaxed);
    take();
    SHMBUS_FAULT_POINT("stream.return.after_take");
    v_.comp_cell(k, pos).store(completion_cell(pos, chunk), std::memory_order_release);  // C1
    cs->ret_chunk.store(0, std::memory_order_relaxed);
    ++pos;
    ++*returned;
    return true;
  };
  // What it never read: we read it for the subscriber, giving chunks back (an entry whose chunk is also
  // marked held was being taken when the subscriber died: one reference, given back once).
  std::uint64_t tail = cs->tail.load(std::memory_order_relaxed);
  const std::uint64_t head = true_head(k);
  // Under drop-oldest the tail of a stopped subscriber may lag by any number of laps: only the last
  // `depth` positions can still hold entries.
  if (head > v_.depth && tail < head - v_.depth) {
    tail = head - v_.depth;
    cs->tail.store(tail, std::memory_order_relaxed);
  }
  for (; tail < head; ++tail) {
    const StreamSlotHeader* h = header_at(v_.slot(k, tail));
    StreamChunkRef ref{};
    if (h->seq.load(std::memory_order_acquire) == tail && (h->flags & kSlotChunk))
      std::memcpy(&ref, v_.slot(k, tail) + sizeof(StreamSlotHeader), sizeof ref);
    else
      ref.chunk = chunks;  // inline or never written: nothing to give back
    if (ref.chunk >= chunks) {
      cs->tail.store(tail + 1, std::memory_order_relaxed);
      continue;
    }
    if (!give_back(ref.chunk, tail, [&] {
          cs->tail.store(tail + 1, std::memory_order_relaxed);
          if (held(j, ref.chunk)) set_held(j, ref.chunk, false);
        }))
      break;
  }
  // What it held, of this publisher.
  if (!full) {
    for (std::uint32_t c = 0; c < chunks; ++c) {
      if (!held(j, c) || t_.pool().header(c).owner.load(std::memory_order_acquire) != pub_owner.value ||
          (live && !released(j, c)))  // a live subscriber's sample: it comes back when it is let go of
        continue;
      if (!give_back(c, kNoSeq, [&] { set_held(j, c, false); })) break;
    }
  }
  cs->comp_head.store(pos, std::memory_order_relaxed);
  return !full;
}

void StreamSupervisor::collect_retired(std::uint32_t i, StreamSweep& s) {
  const OwnerId owner = slot_owner(i);
  ChunkPool& pool = t_.pool();
  const std::uint32_t chunks = pool.chunk_count();
  std::vector<bool> referenced(chunks, false);
  bool any_owned = false;
  // A publisher killed inside a push to the pool's free ring leaves a chunk stamped queued by its slot
  // identity but in no ring: take and free it (as ChunkPool::reclaim does for a dead process).
  const OwnerId me = t_.identity();
  for (std::uint32_t c = 0; c < chunks; ++c) {
    std::uint64_t o = pool.header(c).owner.load(std::memory_order_acquire);
    if (!ChunkPool::is_queued(o) || pool.header(c).pusher.load(std::memory_order_relaxed) != owner.value ||
        pool.in_ring(c))
      continue;
    if (!pool.header(c).owner.compare_exchange_strong(o, me.value, std::memory_order_acq_rel)) continue;
    SHMBUS_FAULT_POINT("stream.collect.after_take");
    pool.release(c);
    ++s.chunks_freed;
  }
  for (std::uint32_t c = 0; c < chunks && !any_owned; ++c)
    any_owned = pool.header(c).owner.load(std::memory_order_relaxed) == owner.value;
  if (!any_owned) return;
  // Unread entries first (their tail with acquire: a subscriber marks a chunk held before it moves the
  // tail past it, S2), then the held bits of the subscribers that can still read or hold them.
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    ConnectionShared* cs = v_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st == kConnFree || cs->pub != i) continue;
    const std::uint64_t head = true_head(k);
    std::uint64_t from = cs->tail.load(std::memory_order_acquire);
    if (head > v_.depth && from < head - v_.depth) from = head - v_.depth;  // only the last lap holds entries
    for (std::uint64_t p = from; p < head; ++p) {
      const StreamSlotHeader* h = header_at(v_.slot(k, p));
      if (h->seq.load(std::memory_order_acquire) != p || !(h->flags & kSlotChunk)) continue;
      StreamChunkRef ref;
      std::memcpy(&ref, v_.slot(k, p) + sizeof(StreamSlotHeader), sizeof ref);
      if (ref.chunk < chunks) referenced[ref.chunk] = true;
    }
  }
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j) {
    const std::uint32_t st = v_.subs[j].state.load(std::memory_order_relaxed);
    if (st == kSlotFree) continue;
    std::atomic<std::uint64_t>* bits = v_.held_of(j);
    std::atomic<std::uint64_t>* rel = v_.rel_of(j);
    for (std::uint64_t w = 0; w < v_.held_words; ++w) {
      // Held and not let go of (released bits: a subscriber we closed is done with the chunk).
      // Acquire: pairs with the subscriber's release when it cleared or released a bit (let_go): its
      // reads of the chunk are done.
      std::uint64_t word = bits[w].load(std::memory_order_acquire) & ~rel[w].load(std::memory_order_acquire);
      while (word != 0) {
        const auto b = static_cast<std::uint32_t>(std::countr_zero(word));
        word &= word - 1;
        const std::uint64_t c = w * 64 + b;
        if (c < chunks) referenced[c] = true;
      }
    }
  }
  for (std::uint32_t c = 0; c < chunks; ++c) {
    std::uint64_t o = pool.header(c).owner.load(std::memory_order_acquire);
    if (o != owner.value || referenced[c]) continue;
    // A closed subscriber that released it leaves held + released bits: clear them (held first), or a
    // later publisher that gets the chunk would be given it back on that subscriber's behalf. Only closed
    // slots can have them, and there the subscriber writes its bits with read-modify-writes too.
    for (std::uint32_t j = 0; j < v_.max_subscribers; ++j)
      if (v_.subs[j].state.load(std::memory_order_relaxed) == kSlotClosing && held(j, c))
        set_held(j, c, false);
    // Take it (the owner word names the slot, not a process: nobody else changes it now), then free it.
    if (!pool.header(c).owner.compare_exchange_strong(o, me.value, std::memory_order_acq_rel)) continue;
    SHMBUS_FAULT_POINT("stream.collect.after_take");
    pool.release(c);
    ++s.chunks_freed;
  }
}

StreamSweep StreamSupervisor::sweep() {
  StreamSweep s;
  bool changed = false;
  const std::uint64_t gen = v_.generation->load(std::memory_order_relaxed);
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    ConnectionShared* cs = v_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st == kConnClosing) {
      if (cs->pub >= v_.max_publishers ||
          v_.pubs[cs->pub].state.load(std::memory_order_relaxed) != kPubActive) {
        free_conn(k);  // the publisher is gone too
        ++s.conns_freed;
        continue;
      }
      // Acquire: pairs with the publisher's release of seen_generation: it writes to k no more.
      if (v_.pubs[cs->pub].seen_generation.load(std::memory_order_acquire) <
          cs->closed_at_gen.load(std::memory_order_relaxed))
        continue;
      // And the subscriber reads k no more: it stopped by itself, it is dead, or it acked the close.
      if (cs->sub >= v_.max_subscribers) continue;
      const SubscriberSlot& ss = v_.subs[cs->sub];
      // Live: we closed the slot of a subscriber that did not ask (SubscriberSlot::quiet). Its unread
      // entries are ours to give back once it acked, but the samples it holds are not: each comes back
      // when it lets go of it (a released bit), or all at once if it dies.
      const bool live = ss.quiet.load(std::memory_order_relaxed) == 0 &&
                        liveness(OwnerId{ss.owner.load(std::memory_order_relaxed)}) != Liveness::dead;
      if (live &&
          ss.seen_generation.load(std::memory_order_acquire) < ss.close_gen.load(std::memory_order_relaxed))
        continue;
      (void)return_refs(k, &s.chunks_returned, live);
      if (cs->closed.load(std::memory_order_acquire) == 1) {  // every reference is back with the publisher
        free_conn(k);
        ++s.conns_freed;
      }
    } else if (st == kConnOrphan) {
      if (cs->sub >= v_.max_subscribers ||
          v_.subs[cs->sub].state.load(std::memory_order_relaxed) != kSlotActive) {
        free_conn(k);
        ++s.conns_freed;
        continue;
      }
      // Still being read? (>=: a publisher killed inside an overwrite leaves its slot busy at the head,
      // and the subscriber steps past it.)
      if (cs->tail.load(std::memory_order_acquire) < true_head(k)) continue;
      // Drained: out of the subscriber's table; freed once it acked that.
      if (v_.sub_conn_at(cs->sub, cs->pub).load(std::memory_order_relaxed) == k)
        v_.sub_conn_at(cs->sub, cs->pub).store(kNoConn, std::memory_order_relaxed);
      cs->closed_at_gen.store(gen + 1, std::memory_order_relaxed);
      cs->state.store(kConnDrained, std::memory_order_relaxed);
      changed = true;
    } else if (st == kConnDrained) {
      if (cs->sub >= v_.max_subscribers ||
          v_.subs[cs->sub].state.load(std::memory_order_relaxed) != kSlotActive ||
          v_.subs[cs->sub].seen_generation.load(std::memory_order_acquire) >=
              cs->closed_at_gen.load(std::memory_order_relaxed)) {
        free_conn(k);
        ++s.conns_freed;
      }
    }
  }
  // Slots that are done: counted in one pass over connections and one over chunks.
  std::vector<std::uint32_t> pub_busy(v_.max_publishers, 0), sub_busy(v_.max_subscribers, 0);
  bool any_retired = false;
  for (std::uint32_t i = 0; i < v_.max_publishers && !any_retired; ++i)
    any_retired = v_.pubs[i].state.load(std::memory_order_relaxed) == kPubRetired;
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i)
    if (v_.pubs[i].state.load(std::memory_order_relaxed) == kPubRetired) collect_retired(i, s);
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    const ConnectionShared* cs = v_.conn(k);
    if (cs->state.load(std::memory_order_relaxed) == kConnFree) continue;
    if (cs->pub < v_.max_publishers) ++pub_busy[cs->pub];
    if (cs->sub < v_.max_subscribers) ++sub_busy[cs->sub];
  }
  if (any_retired)
    for (std::uint32_t c = 0; c < t_.pool().chunk_count(); ++c) {
      const std::uint64_t o = t_.pool().header(c).owner.load(std::memory_order_relaxed);
      if (is_slot_owner(o) && (o & 0xffffffffULL) < v_.max_publishers) ++pub_busy[o & 0xffffffffULL];
    }
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i) {
    PublisherSlot& ps = v_.pubs[i];
    if (ps.state.load(std::memory_order_relaxed) != kPubRetired || pub_busy[i] != 0) continue;
    t_.shared()->published.fetch_add(ps.published.load(std::memory_order_relaxed), std::memory_order_relaxed);
    ps.published.store(0, std::memory_order_relaxed);
    ps.owner.store(0, std::memory_order_relaxed);
    ps.state.store(kPubFree, std::memory_order_relaxed);
    ++s.slots_freed;
  }
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j) {
    SubscriberSlot& ss = v_.subs[j];
    if (ss.state.load(std::memory_order_relaxed) != kSlotClosing || sub_busy[j] != 0) continue;
    // A live subscriber we closed may still hold chunks of gone publishers: its bits keep them from being
    // collected, so the slot (and its bits) stays until it lets go of them or dies.
    // And it must have seen the close (acked), or it would go on using a slot that is someone else's.
    if (ss.quiet.load(std::memory_order_relaxed) == 0 &&
        (holds_any(j) ||
         ss.seen_generation.load(std::memory_order_acquire) < ss.close_gen.load(std::memory_order_relaxed)) &&
        liveness(OwnerId{ss.owner.load(std::memory_order_relaxed)}) != Liveness::dead)
      continue;
    t_.shared()->delivered.fetch_add(ss.delivered.exchange(0, std::memory_order_relaxed),
                                     std::memory_order_relaxed);
    // A dead owner's threads may still be counted in the wake word (killed while parked): clear them
    // now, whichever way its death was learned.
    if (const OwnerId o{ss.owner.load(std::memory_order_relaxed)}; o.valid() && liveness(o) == Liveness::dead)
      EventCount(&ss.ec).reset_sleepers();
    std::atomic<std::uint64_t>* bits = v_.held_of(j);
    for (std::uint64_t w = 0; w < 2 * v_.held_words; ++w) bits[w].store(0, std::memory_order_relaxed);
    ss.owner.store(0, std::memory_order_relaxed);
    ss.state.store(kSlotFree, std::memory_order_relaxed);
    ++s.slots_freed;
  }
  // A free slot's wake word may still count a thread of its last owner that was parked there when it
  // died (it had moved to another slot, say): once that owner is dead, nobody else can be counted there.
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j) {
    SubscriberSlot& ss = v_.subs[j];
    if (ss.state.load(std::memory_order_relaxed) != kSlotFree ||
        (ss.ec.futex_sleepers.load(std::memory_order_relaxed) == 0 &&
         ss.ec.fd_sleepers.load(std::memory_order_relaxed) == 0))
      continue;
    if (const OwnerId last{ss.last_owner.load(std::memory_order_relaxed)};
        last.valid() && liveness(last) == Liveness::dead)
      EventCount(&ss.ec).reset_sleepers();
  }
  for (std::uint32_t k = 0; k < v_.conn_capacity && !s.pending; ++k)
    s.pending = v_.conn(k)->state.load(std::memory_order_relaxed) != kConnFree &&
                v_.conn(k)->state.load(std::memory_order_relaxed) != kConnActive;
  for (std::uint32_t i = 0; i < v_.max_publishers && !s.pending; ++i)
    s.pending = v_.pubs[i].state.load(std::memory_order_relaxed) == kPubRetired;
  for (std::uint32_t j = 0; j < v_.max_subscribers && !s.pending; ++j)
    s.pending = v_.subs[j].state.load(std::memory_order_relaxed) == kSlotClosing;
  if (changed) bump();
  return s;
}

std::uint32_t StreamSupervisor::on_death(OwnerId dead) {
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i)
    if (v_.pubs[i].state.load(std::memory_order_relaxed) == kPubActive &&
        v_.pubs[i].owner.load(std::memory_order_relaxed) == dead.value) {
      retire_publisher(i);
      ++n;
    }
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j) {
    SubscriberSlot& ss = v_.subs[j];
    if (ss.owner.load(std::memory_order_relaxed) != dead.value) continue;
    if (ss.state.load(std::memory_order_relaxed) == kSlotActive) {
      close_subscriber(j, true);
      EventCount(&ss.ec).reset_sleepers();  // only the dead owner waited there
      ++n;
    } else if (ss.state.load(std::memory_order_relaxed) == kSlotClosing) {
      // Closed earlier (its socket closed first, say) and now dead: it reads nothing any more, and any
      // count of it in the wake word is a dead thread's.
      ss.quiet.store(1, std::memory_order_relaxed);
      EventCount(&ss.ec).reset_sleepers();
    }
  }
  return n;
}

std::uint32_t StreamSupervisor::adopt() {
  std::uint32_t changed = 0;
  // First finish what a broker killed inside attach, retire or close left half done (every one of them
  // bumps the generation last, so no port has seen the half-done state):
  //  - a connection to a slot still free: made for an attach that never completed; nobody used it.
  //  - an active connection of a retired publisher: retire_publisher's loop, redone.
  //  - an active connection of a closing subscriber: close_subscriber's loop, redone.
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    ConnectionShared* cs = v_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st == kConnFree) continue;
    if (cs->pub >= v_.max_publishers || cs->sub >= v_.max_subscribers) {
      cs->state.store(kConnFree, std::memory_order_relaxed);  // out of range: nothing can refer to it
      ++changed;
      continue;
    }
    const std::uint32_t pst = v_.pubs[cs->pub].state.load(std::memory_order_relaxed);
    const std::uint32_t sst = v_.subs[cs->sub].state.load(std::memory_order_relaxed);
    if (st != kConnActive) continue;
    if (pst == kPubFree || sst == kSlotFree) {
      free_conn(k);
      ++changed;
    } else if (pst == kPubRetired) {
      if (sst == kSlotActive)
        cs->state.store(kConnOrphan, std::memory_order_relaxed);
      else
        free_conn(k);
      ++changed;
    } else if (sst == kSlotClosing) {
      cs->closed_at_gen.store(v_.subs[cs->sub].close_gen.load(std::memory_order_relaxed),
                              std::memory_order_relaxed);
      cs->state.store(kConnClosing, std::memory_order_relaxed);
      ++changed;
    }
  }
  // Then the tables, from the connection states (one pass over the connections).
  const std::uint64_t cells = std::uint64_t{v_.max_publishers} * v_.max_subscribers;
  std::vector<std::uint32_t> want_pub(cells, kNoConn), want_sub(cells, kNoConn);
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    const ConnectionShared* cs = v_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st != kConnActive && st != kConnOrphan) continue;
    const std::uint64_t pi = std::uint64_t{cs->pub} * v_.max_subscribers + cs->sub;
    const std::uint64_t si = std::uint64_t{cs->sub} * v_.max_publishers + cs->pub;
    if (st == kConnActive) {
      if (want_pub[pi] != kNoConn) {  // two for one pair cannot arise from our steps; keep the first
        free_conn(k);
        ++changed;
        continue;
      }
      want_pub[pi] = k;
    }
    want_sub[si] = k;
  }
  for (std::uint64_t x = 0; x < cells; ++x) {
    if (v_.pub_conn[x].load(std::memory_order_relaxed) != want_pub[x]) {
      v_.pub_conn[x].store(want_pub[x], std::memory_order_relaxed);
      ++changed;
    }
    if (v_.sub_conn[x].load(std::memory_order_relaxed) != want_sub[x]) {
      v_.sub_conn[x].store(want_sub[x], std::memory_order_relaxed);
      ++changed;
    }
  }
  bump();  // every port re-reads its table once
  // A publisher blocked for room (overflow block) in a connection this closed stops waiting, as after
  // close_subscriber().
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i)
    if (v_.pubs[i].state.load(std::memory_order_relaxed) == kPubActive)
      EventCount(&v_.pubs[i].space).notify();
  return changed;
}

std::uint64_t StreamSupervisor::queued_messages() const {
  std::uint64_t n = 0;
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k) {
    const ConnectionShared* cs = v_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st != kConnActive && st != kConnOrphan) continue;
    const std::uint64_t h = cs->head.load(std::memory_order_relaxed),
                        t = cs->tail.load(std::memory_order_relaxed);
    n += h > t && h - t <= 2 * v_.depth ? h - t : 0;
  }
  return n;
}

std::uint64_t StreamSupervisor::delivered_total() const {
  std::uint64_t n = t_.shared()->delivered.load(std::memory_order_relaxed);
  for (std::uint32_t j = 0; j < v_.max_subscribers; ++j)
    if (v_.subs[j].state.load(std::memory_order_relaxed) != kSlotFree)
      n += v_.subs[j].delivered.load(std::memory_order_relaxed);
  return n;
}

std::uint64_t StreamSupervisor::published_total() const {
  std::uint64_t n = t_.shared()->published.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < v_.max_publishers; ++i)
    if (v_.pubs[i].state.load(std::memory_order_relaxed) != kPubFree)
      n += v_.pubs[i].published.load(std::memory_order_relaxed);
  return n;
}

std::uint64_t StreamSupervisor::dropped_total() const {
  std::uint64_t n = t_.shared()->dropped.load(std::memory_order_relaxed);
  for (std::uint32_t k = 0; k < v_.conn_capacity; ++k)
    if (v_.conn(k)->state.load(std::memory_order_relaxed) != kConnFree)
      n += v_.conn(k)->dropped.load(std::memory_order_relaxed);
  return n;
}

}  // namespace shmbus::detail
