// Per-topic statistics, as the broker reports them in the "topics" reply (see shmbus/detail/control.hpp).
//
// Counters come from the topic segment (TopicShared, relaxed: statistics only) and are totals since the
// topic was created:
//   published    messages accepted by the topic (stream: publish calls; queue: pushes)
//   delivered    messages taken by subscribers or consumers (a redelivered message counts again). For
//                streams each subscriber counts in its own slot; the broker folds a slot's count into
//                TopicShared::delivered when it frees the slot (fold_slot_delivered()), so the total is
//                that plus the counts of the active slots.
//   acked        queue messages acknowledged
//   dropped      stream messages a subscriber missed (drop-oldest, or block past its deadline)
//   redelivered  queue messages put back for another consumer: nacked (TopicShared::nacked), or left
//                unacked by a consumer that died (pushed back by the broker's reclaim)
// and two gauges:
//   queued       messages sitting in the topic's rings now (all subscriber rings, or the queue)
//   in_flight    messages accepted and not yet finished with. Queue: queued plus those taken and not yet
//                acked, i.e. queued + max(0, delivered - acked - redelivered) (an ack, a nack or a
//                redelivery ends one delivery; the next pop starts another). Stream: queued (a stream
//                message is finished with once its subscriber takes it).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

#include "shmbus/topic.hpp"

namespace shmbus::broker {

// {"name","id","kind","depth","max_size","overflow","max_subscribers","subscribers","published",
//  "delivered","acked","dropped","redelivered","queued","in_flight"}
nlohmann::json topic_stats(const TopicHandle& topic);

// Before the broker frees stream slot `slot` (unsubscribe, death): add its delivered count to the
// topic's, since activating the slot again resets it. Broker only.
void fold_slot_delivered(TopicHandle& topic, std::uint32_t slot);
// The same for every active slot that `owner` holds (before TopicHandle::reclaim(owner) frees them).
void fold_owner_delivered(TopicHandle& topic, OwnerId owner);

}  // namespace shmbus::broker
