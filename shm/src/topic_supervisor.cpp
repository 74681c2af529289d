// The broker's half of any topic (topic.hpp): reclaiming what a dead process held, finding dead owners,
// retrying redeliveries that met a full ring, counting what waits. A stream's slots and connections are
// the stream supervisor's (stream_supervisor.cpp).
#include <unordered_set>

#include "shmbus/topic.hpp"

namespace shmbus {

std::uint64_t TopicHandle::retry_held() {
  std::uint64_t requeued = 0;
  std::vector<std::uint32_t> still;
  for (std::uint32_t c : held_) {
    const std::uint32_t ring = pool_.header(c).last_ring.load(std::memory_order_relaxed);
    if (kind() == TopicKind::queue && ring == kQueueRing) {
      if (requeue(c) == IoStatus::ok) {
        // Counted now that it is back in the queue, as reclaim() counts those it pushes at once.
        pool_.shared()->redelivered.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
        ++requeued;
      } else {
        still.push_back(c);
      }
      continue;
    }
    release(c);
  }
  held_ = std::move(still);
  return requeued;
}

ReclaimReport TopicHandle::reclaim(OwnerId dead) {
  for (std::uint32_t i = 0; i < waiters_.capacity; ++i)
    if (waiters_.records[i].owner.load(std::memory_order_acquire) == dead.value)
      EventCount::forget(waiters_.records[i]);
  (void)waiters_.lower();  // notifiers scan no further than the records still claimed
  ReclaimReport rep = pool_.reclaim(
      dead, kind() == TopicKind::queue ? ChunkPool::Policy::redeliver : ChunkPool::Policy::free);
  for (std::uint32_t c : rep.held) held_.push_back(c);
  // Wake both sides whatever came back: the dead process may have made a change and died before it
  // announced it (a producer between its push and its notify; a consumer inside try_receive_batch, whose
  // pops and acks wake producers only at the batch's end). Once per death, so no cost worth saving.
  notify(WaitOn::not_empty);
  notify(WaitOn::space);
  return rep;
}

std::vector<OwnerId> TopicHandle::dead_owners(std::vector<OwnerId>* unknown) const {
  std::unordered_set<std::uint64_t> seen, dead;
  const OwnerId me = identity();
  auto consider = [&](std::uint64_t v) {
    const OwnerId id{v};
    // A stream publisher slot's identity is no process: the stream supervisor deals with those chunks.
    if (!id.valid() || detail::is_slot_owner(v) || id == me || !seen.insert(v).second) return;
    switch (liveness(id)) {
      case Liveness::dead:
        dead.insert(v);
        break;
      case Liveness::unknown:
        if (unknown != nullptr) unknown->push_back(id);
        break;
      case Liveness::alive:
        break;
    }
  };
  for (std::uint32_t i = 0; i < waiters_.capacity; ++i)
    consider(waiters_.records[i].owner.load(std::memory_order_acquire));
  for (std::uint32_t i = 0; i < pool_.chunk_count(); ++i) {
    const std::uint64_t o = pool_.header(i).owner.load(std::memory_order_acquire);
    if (!ChunkPool::is_queued(o)) {
      consider(o);
    } else if (!pool_.in_ring(i)) {  // a push its pusher may not have finished
      consider(pool_.header(i).pusher.load(std::memory_order_relaxed));
    }
  }
  for (std::uint32_t i = 0; i < stream_.max_publishers; ++i)
    if (stream_.pubs[i].state.load(std::memory_order_relaxed) == detail::kPubActive)
      consider(stream_.pubs[i].owner.load(std::memory_order_relaxed));
  for (std::uint32_t j = 0; j < stream_.max_subscribers; ++j)
    if (stream_.subs[j].state.load(std::memory_order_relaxed) == kSlotActive)
      consider(stream_.subs[j].owner.load(std::memory_order_relaxed));
  std::vector<OwnerId> out;
  for (auto v : dead) out.push_back(OwnerId{v});
  return out;
}

std::uint64_t TopicHandle::queued_messages() const {
  if (kind() == TopicKind::queue) return pool_.ring(kQueueRing).size_approx();
  std::uint64_t n = 0;
  for (std::uint32_t k = 0; k < stream_.conn_capacity; ++k) {
    const detail::ConnectionShared* cs = stream_.conn(k);
    const std::uint32_t st = cs->state.load(std::memory_order_relaxed);
    if (st != detail::kConnActive && st != detail::kConnOrphan) continue;
    const std::uint64_t h = cs->head.load(std::memory_order_relaxed),
                        t = cs->tail.load(std::memory_order_relaxed);
    n += h > t && h - t <= 2 * stream_.depth ? h - t : 0;
  }
  return n;
}

}  // namespace shmbus
