#include "stats.hpp"

namespace shmbus::broker {

nlohmann::json topic_stats(const TopicHandle& topic) {
  const TopicShared* t = topic.shared();
  // Relaxed loads: statistics, read while clients keep counting; each number is a snapshot on its own.
  const bool queue = topic.kind() == TopicKind::queue;
  std::uint64_t delivered = t->delivered.load(std::memory_order_relaxed);
  std::uint64_t dropped = t->dropped.load(std::memory_order_relaxed);
  if (!queue) {
    for (std::uint32_t i = 0; i < topic.max_subscribers(); ++i) {
      const SubscriberSlot* s = topic.slot(i);
      if (s->state.load(std::memory_order_relaxed) == kSlotActive)
        delivered += s->delivered.load(std::memory_order_relaxed);
    }
  }
  const std::uint64_t published = t->published.load(std::memory_order_relaxed);
  const std::uint64_t acked = t->acked.load(std::memory_order_relaxed);
  const std::uint64_t nacked = t->nacked.load(std::memory_order_relaxed);
  const std::uint64_t redelivered =
      nacked + topic.pool().shared()->redelivered.load(std::memory_order_relaxed);
  const std::uint64_t queued = topic.queued_messages();
  std::uint64_t in_flight = queued;
  if (queue && delivered > acked + redelivered) in_flight += delivered - acked - redelivered;
  return {{"name", topic.name()},
          {"id", t->topic_id},
          {"kind", to_string(topic.kind())},
          {"depth", t->depth},
          {"max_size", t->max_size},
          {"overflow", to_string(topic.overflow())},
          {"max_subscribers", t->max_subscribers},
          {"subscribers", topic.active_subscribers()},
          {"published", published},
          {"delivered", delivered},
          {"acked", acked},
          {"dropped", dropped},
          {"redelivered", redelivered},
          {"queued", queued},
          {"in_flight", in_flight}};
}

void fold_slot_delivered(TopicHandle& topic, std::uint32_t slot) {
  if (topic.kind() != TopicKind::stream || slot >= topic.max_subscribers()) return;
  SubscriberSlot* s = topic.slot(slot);
  if (s->state.load(std::memory_order_relaxed) != kSlotActive) return;
  // exchange, so a slot folded twice (freed, then reclaimed) counts once. Relaxed: statistics.
  const std::uint64_t n = s->delivered.exchange(0, std::memory_order_relaxed);
  topic.shared()->delivered.fetch_add(n, std::memory_order_relaxed);
}

void fold_owner_delivered(TopicHandle& topic, OwnerId owner) {
  for (std::uint32_t i = 0; i < topic.max_subscribers(); ++i)
    if (topic.slot(i)->owner.load(std::memory_order_relaxed) == owner.value) fold_slot_delivered(topic, i);
}

}  // namespace shmbus::broker
