// libshmbus, the user-facing API: connect to a bus domain, then publish and subscribe to streams, and
// produce to and consume from queues.
//
//   auto client = shmbus::Client::connect();            // SHMBUS_DOMAIN or "default"; may autostart a broker
//   auto pub = client->publisher("sensors.left.temp").value();
//   auto loan = pub.loan(sizeof(Reading)).value();      // writable bytes inside shared memory
//   new (loan.data()) Reading{21.5};
//   pub.publish(std::move(loan), {{"unit", "C"}, {"prio", 5}});
//   auto sub = client->subscriber("sensors.left.temp").value();
//   while (auto s = sub.receive(100ms)) use(s->bytes(), s->attr("unit"), s->missed());
//
// Threads: a Client may be shared by threads (control calls are serialised); each Publisher,
// Subscriber, Producer and Consumer is used by one thread at a time. A Sample or Delivery must not
// outlive the port that produced it; a port must not outlive its Client. A Sample or Delivery that was
// released, acked, nacked or moved from holds nothing: its accessors return empty values. A Client does
// not survive fork(): it runs a reconnect thread, so a child must connect anew (and should fork before it
// uses locks the parent's threads may hold, as with any multi-threaded process).
//
// The data path (loan, publish, try_publish, try_receive, receive, ack) never talks to the broker, never
// takes a lock and never allocates (attribute lists are views; a received message's attributes view the
// message). Setup calls return Result<T>; the receive loop never throws. try_publish() reports its
// outcome as a PublishStatus without building any string; publish() turns failures into an Error.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "shmbus/attributes.hpp"
#include "shmbus/detail/stream_port.hpp"
#include "shmbus/options.hpp"
#include "shmbus/paths.hpp"
#include "shmbus/result.hpp"
#include "shmbus/topic.hpp"

namespace shmbus {

namespace detail {
struct ClientCore;
struct PortState;
}  // namespace detail

struct ClientOptions {
  std::string domain;                                // empty: $SHMBUS_DOMAIN or "default"
  std::string name;                                  // shown by `shmbus status`; empty: the program name
  std::optional<bool> autostart;                     // unset: on unless $SHMBUS_AUTOSTART=0
  std::chrono::milliseconds connect_timeout{5000};   // how long to wait for an autostarted broker
  std::chrono::milliseconds request_timeout{10000};  // how long a control call (subscribe, topic create,
                                                     // status...) waits for the broker's answer
};

// What try_publish() did, without a message string (the hot path builds none).
enum class PublishStatus : std::uint8_t {
  ok,              // every subscriber (stream) or the queue has it
  no_subscribers,  // stream: nobody subscribes now; the message is consumed, not an error
  missed_by_some,  // stream: some subscribers' connections stayed full (block: until the timeout) and
                   // they miss it; the others have it
  full,            // queue: it stayed full until the timeout; nothing was enqueued
  too_large,       // payload over the topic's max size, or attributes over its attrs_max
  no_chunk,        // no chunk freed up before the timeout (every chunk is queued or held)
  deleted,         // the topic was deleted or purged
  closed,          // the broker let this port go (this process was taken for gone); open a new one
};
const char* to_string(PublishStatus s);

class Publisher;
class Subscriber;
class Producer;
class Consumer;

// A received message. A small one was copied out of the ring (it is inside the Sample); a large one or
// a zero-copy one is read in place in shared memory and goes back to its publisher when the Sample is
// destroyed. Attribute values view the Sample: valid while it lives and is not moved.
class Sample {
 public:
  Sample(Sample&& other) noexcept;
  Sample& operator=(Sample&& other) noexcept;
  Sample(const Sample&) = delete;
  ~Sample();

  std::span<const std::byte> bytes() const;
  std::string_view text() const;  // bytes() as characters
  std::string topic() const;
  std::uint64_t seq() const { return where_ == Where::none ? 0 : r_.seq; }  // the publisher's sequence number
  std::uint64_t publisher() const { return where_ == Where::none ? 0 : r_.publisher; }  // the publisher's id
  // CLOCK_REALTIME at publish; 0 when the publisher does not stamp (PublisherOptions::timestamps).
  std::uint64_t timestamp_ns() const { return where_ == Where::none ? 0 : r_.timestamp_ns; }
  // This publisher's messages missed just before this one (a slow subscriber under drop-oldest, or one
  // whose connection stayed full under block).
  std::uint64_t missed() const { return where_ == Where::none ? 0 : r_.missed; }
  std::optional<AttrValue> attr(std::string_view key) const;
  std::vector<Attr> attrs() const;
  bool redelivered() const { return where_ != Where::none && redelivered_; }

 private:
  friend class Subscriber;
  friend class Consumer;
  friend class Delivery;
  enum class Where : std::uint8_t { none, copy, stream_chunk, queue_chunk };
  Sample() = default;
  void reset() noexcept;
  std::span<const std::byte> attr_bytes() const;
  void move_from(Sample& o) noexcept;

  Where where_ = Where::none;
  bool redelivered_ = false;
  detail::PortState* port_ = nullptr;        // the port it came through (its topic)
  detail::StreamSubscriber* sub_ = nullptr;  // stream chunk: the subscriber to give it back through
  detail::Received r_;                       // where the message is; a small one's bytes
};

// A message taken from a queue. ack() gives it back to the pool; nack() (or destruction without ack)
// puts it back in the queue for another consumer, flagged redelivered.
class Delivery {
 public:
  Delivery(Delivery&&) noexcept = default;
  // The message this Delivery held, if any, is nacked first (as if it were destroyed).
  Delivery& operator=(Delivery&& other) noexcept;
  ~Delivery();

  std::span<const std::byte> bytes() const { return sample_.bytes(); }
  std::string_view text() const { return sample_.text(); }
  std::string topic() const { return sample_.topic(); }
  std::uint64_t seq() const { return sample_.seq(); }
  std::uint64_t publisher() const { return sample_.publisher(); }
  std::uint64_t timestamp_ns() const { return sample_.timestamp_ns(); }
  std::optional<AttrValue> attr(std::string_view key) const { return sample_.attr(key); }
  std::vector<Attr> attrs() const { return sample_.attrs(); }
  bool redelivered() const { return sample_.redelivered(); }
  void ack() noexcept;
  void nack() noexcept;

 private:
  friend class Consumer;
  explicit Delivery(Sample s) : sample_(std::move(s)) {}
  Sample sample_;
};

// Writable bytes inside a chunk of shared memory, from Publisher::loan() or Producer::loan(). Returned
// unpublished when destroyed.
class Loan {
 public:
  Loan(Loan&& other) noexcept;
  Loan& operator=(Loan&& other) noexcept;
  Loan(const Loan&) = delete;
  ~Loan();
  std::byte* data() const;
  std::size_t size() const { return size_; }
  void resize(std::size_t n);  // shrink what will be published (n <= the loaned size)

 private:
  friend class Publisher;
  friend class Producer;
  Loan(detail::PortState* port, std::uint32_t chunk, std::size_t size)
      : port_(port), chunk_(chunk), size_(size) {}
  void give_back() noexcept;
  detail::PortState* port_ = nullptr;
  std::uint32_t chunk_ = 0;
  std::size_t size_ = 0;
};

struct PublisherOptions {
  bool timestamps = false;  // stamp each message with CLOCK_REALTIME (a clock read, ~25 ns, per message)
};

class Publisher {
 public:
  Publisher(Publisher&&) noexcept;
  Publisher& operator=(Publisher&&) noexcept;
  ~Publisher();  // gives the publisher slot back
  // A chunk for `size` payload bytes. Errc::too_large above the topic's max size; Errc::timed_out when
  // no chunk frees up within `timeout` (subscribers hold them all).
  Result<Loan> loan(std::size_t size, std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  // Publish to every current subscriber (a message with no subscriber succeeds and goes nowhere). Under
  // policy block, waits up to `timeout` for room; subscribers that stay full miss the message
  // (Errc::timed_out is returned; the others got it). Under drop-oldest a subscriber that is behind
  // loses its oldest message, or, when that one is a zero-copy chunk it may be reading, this one; it
  // learns how many from Sample::missed(), and publish() succeeds.
  Status publish(Loan&& loan, AttrList attrs = {},
                 std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  Status publish(std::span<const std::byte> bytes, AttrList attrs = {},
                 std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  Status publish(std::string_view text, AttrList attrs = {},
                 std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  // The same without a message string or a wait: a full connection under block is a miss at once.
  PublishStatus try_publish(std::span<const std::byte> bytes, AttrList attrs = {}) noexcept;
  PublishStatus try_publish(Loan&& loan, AttrList attrs = {}) noexcept;
  std::string topic() const;
  std::uint64_t id() const;
  std::size_t max_size() const;

 private:
  friend class Client;
  explicit Publisher(std::shared_ptr<detail::PortState> p) : p_(std::move(p)) {}
  std::shared_ptr<detail::PortState> p_;
};

struct SubscriberOptions {
  std::uint32_t spin = 0;  // busy-poll iterations before parking in receive()
};

class Subscriber {
 public:
  Subscriber(Subscriber&&) noexcept;
  Subscriber& operator=(Subscriber&&) noexcept;
  ~Subscriber();  // gives the subscriber slot back (unsubscribe)
  // Nothing (nullopt) also once the topic was deleted; receive() says so.
  std::optional<Sample> try_receive() noexcept;
  // Wait up to `timeout` (spin, then park on the futex). Errc::timed_out when nothing came; Errc::not_found
  // once the topic was deleted or purged (its messages went with it); Errc::closed when the subscription
  // was lost and could not be taken up again.
  Result<Sample> receive(std::chrono::nanoseconds timeout);
  // Up to `max` messages that are ready now, each handed to f(Sample&) in order (f may move it out to keep
  // it); returns how many. Under overflow block the read position goes out every depth/4 messages and at
  // the batch's end rather than after each message, so a fast reader costs its publishers less; a
  // publisher blocked for room sees the room then. f must not destroy this Subscriber.
  template <typename F>
  std::size_t try_receive_batch(F&& f, std::size_t max) {
    return try_receive_batch_impl(
        [](void* ctx, Sample& s) { (*static_cast<std::remove_reference_t<F>*>(ctx))(s); },
        const_cast<void*>(static_cast<const void*>(std::addressof(f))), max);
  }
  std::string topic() const;
  std::uint32_t slot() const;

 private:
  friend class Client;
  explicit Subscriber(std::shared_ptr<detail::PortState> p) : p_(std::move(p)) {}
  std::size_t try_receive_batch_impl(void (*fn)(void*, Sample&), void* ctx, std::size_t max);
  std::shared_ptr<detail::PortState> p_;
};

class Producer {
 public:
  Producer(Producer&&) noexcept;
  Producer& operator=(Producer&&) noexcept;
  ~Producer();
  Result<Loan> loan(std::size_t size, std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  // Enqueue; when the queue is full waits up to `timeout` (back-pressure), then Errc::timed_out and the
  // message is not enqueued.
  Status publish(Loan&& loan, AttrList attrs = {},
                 std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  Status publish(std::span<const std::byte> bytes, AttrList attrs = {},
                 std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  Status publish(std::string_view text, AttrList attrs = {},
                 std::chrono::nanoseconds timeout = std::chrono::seconds(1));
  PublishStatus try_publish(std::span<const std::byte> bytes, AttrList attrs = {}) noexcept;
  std::string topic() const;
  std::size_t max_size() const;

 private:
  friend class Client;
  explicit Producer(std::shared_ptr<detail::PortState> p) : p_(std::move(p)) {}
  std::shared_ptr<detail::PortState> p_;
};

struct ConsumerOptions {
  std::uint32_t spin = 0;  // busy-poll iterations before parking in receive()
};

class Consumer {
 public:
  Consumer(Consumer&&) noexcept;
  Consumer& operator=(Consumer&&) noexcept;
  ~Consumer();
  std::optional<Delivery> try_receive() noexcept;
  Result<Delivery> receive(std::chrono::nanoseconds timeout);
  // Take up to `max` of the messages ready when it starts, calling f(Delivery&) for each, in queue order;
  // returns how many. f acks, nacks, or moves the Delivery out to keep it; one it leaves alone is nacked
  // (put back for another consumer) when f returns, as a dropped Delivery is, and this batch does not take
  // it again. Producers waiting for room are woken once, at the batch's end (also for the acks f makes
  // inside the batch), rather than per message: an f that waits for producers to make progress stalls
  // them until the batch ends. The batch stops when the topic is deleted. f must not destroy this
  // Consumer.
  template <typename F>
  std::size_t try_receive_batch(F&& f, std::size_t max) {
    return try_receive_batch_impl(
        [](void* ctx, Delivery& d) { (*static_cast<std::remove_reference_t<F>*>(ctx))(d); },
        const_cast<void*>(static_cast<const void*>(std::addressof(f))), max);
  }
  std::string topic() const;

 private:
  friend class Client;
  explicit Consumer(std::shared_ptr<detail::PortState> p) : p_(std::move(p)) {}
  std::size_t try_receive_batch_impl(void (*fn)(void*, Delivery&), void* ctx, std::size_t max);
  static Delivery delivery_of(detail::PortState& p, std::uint32_t chunk) noexcept;
  std::shared_ptr<detail::PortState> p_;
};

class Client {
 public:
  // Connect to the domain's broker (starting one if none runs and autostart is on).
  static Result<Client> connect(const ClientOptions& options = {});
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  Result<Publisher> publisher(std::string_view topic, const PublisherOptions& options = {});
  Result<Subscriber> subscriber(std::string_view topic, const SubscriberOptions& options = {});
  Result<Producer> producer(std::string_view topic);
  Result<Consumer> consumer(std::string_view topic, const ConsumerOptions& options = {});

  Status create_topic(std::string_view name, const TopicOptions& options);
  Status delete_topic(std::string_view name);
  // A raw control call (what the `shmbus` command uses for status, topics, stats, stop).
  Result<nlohmann::json> request(const nlohmann::json& message);

  const std::string& domain() const;
  // True while the control connection is up (it reconnects on its own after a broker restart).
  bool connected() const;

 private:
  explicit Client(std::shared_ptr<detail::ClientCore> core) : core_(std::move(core)) {}
  std::shared_ptr<detail::ClientCore> core_;
};

// Start a broker for `domain` in the background (`shmbus broker --autostart`), as Client::connect() does.
// The binary is $SHMBUS_BROKER if set, else `shmbus` next to the running program, else `shmbus` on PATH.
Status spawn_broker(std::string_view domain);

}  // namespace shmbus
