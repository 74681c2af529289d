// shmbus-test-consumer TOPIC HOLD_FILE: a queue consumer for tests that must run as a separate program
// (inside `unshare --pid --fork --mount-proc`, for one). Takes one message, prints "got <text>", waits
// until HOLD_FILE exists (at most 60 s), acks, prints "acked" and exits 0. Exit 2..5 name what failed.
// Domain and runtime directory come from SHMBUS_DOMAIN / SHMBUS_RUNTIME_DIR, as for any client.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "shmbus/shmbus.hpp"

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s TOPIC HOLD_FILE\n", argv[0]);
    return 64;
  }
  auto c = shmbus::Client::connect({.name = "ns-consumer"});
  if (!c) {
    std::fprintf(stderr, "connect: %s\n", c.error().message().c_str());
    return 2;
  }
  auto con = c->consumer(argv[1]);
  if (!con) {
    std::fprintf(stderr, "consumer: %s\n", con.error().message().c_str());
    return 3;
  }
  auto d = con->receive(20s);
  if (!d) {
    std::fprintf(stderr, "receive: %s\n", d.error().message().c_str());
    return 4;
  }
  std::printf("got %.*s pid %d\n", static_cast<int>(d->text().size()), d->text().data(),
              static_cast<int>(getpid()));
  std::fflush(stdout);
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (access(argv[2], F_OK) != 0) {
    if (std::chrono::steady_clock::now() > end) return 5;
    std::this_thread::sleep_for(10ms);
  }
  d->ack();  // aborted ("mine == self.value") when the broker had given the message to someone else
  std::printf("acked\n");
  return 0;
}
