// The control plane: one Unix stream socket per domain (<runtime>/<domain>/broker.sock) between each
// client and the broker.
//
// Framing: a 4-byte little-endian length, then that many bytes of one UTF-8 JSON object. A frame longer
// than kMaxFrame, or one that is not a JSON object, is a protocol error: the broker answers with an
// error frame and closes that connection (it never stops for a bad client).
//
// Protocol version 2. Every request has "op"; clients send a "req_id" (a positive integer, increasing on
// each connection) with each, and every reply echoes the request's "req_id" when it had a valid one. Every
// reply has "ok" (true/false). A failed reply has "code" (an
// errc_name(), e.g. "not_found") and "error" (a message naming the thing and the fix). A reply whose
// req_id is older than the request a client waits for answers a request that timed out: the client drops
// it and reads on (call() below), so one timeout never shifts every later answer by one.
//   {"op":"hello","version":2,"client":"<name>"}         first frame of a connection; reply:
//        {"ok":true,"version":2,"broker_pid":N,"domain":"d","identity":U,"pid":P}. A version the broker
//        does not speak gets {"ok":false,"code":"version_mismatch",...}. The broker learns pid/uid/gid
//        from SO_PEERCRED, opens a pidfd, and answers with the client's pid and OwnerId *as the broker
//        sees them* (its pid namespace): the client stamps `identity` on everything it holds, so a
//        client in a container is named by what the broker can check. A client that the broker's pid
//        namespace cannot see (SO_PEERCRED pid 0) is refused with code "unavailable".
//   {"op":"status"}     -> {"ok":true,"pid":N,"domain":"d","uptime_s":X,"clients":N,"topics":N,
//                           "autostart":bool,"runtime_dir":"..."}
//   {"op":"topics"}     -> {"ok":true,"topics":[{"name","id","kind","depth","max_size","overflow",
//                           "max_subscribers","subscribers","published","delivered","acked","dropped",
//                           "redelivered","queued","in_flight"}...]}
//   {"op":"topic_create","name":"a.b","kind":"stream|queue","depth":N,"max_size":N,
//                        "overflow":"drop-oldest|block","max_subscribers":N}   (all but name optional)
//                       -> {"ok":true,"topic":{...as in topics...}}
//   {"op":"topic_delete","name":"a.b"} -> {"ok":true}
//   {"op":"subscribe","name":"a.b","port":N} -> {"ok":true,"name":"a.b","id":topic_id,"slot":i,"port":N}
//   {"op":"unsubscribe","name":"a.b","slot":i}     -> {"ok":true,"name":"a.b","slot":i}
//   {"op":"unsubscribe","name":"a.b","port":N}     the same, naming the slot by the port it was taken for
//        (what a client sends when its subscribe timed out: the broker may still grant it)
//   {"op":"reattach","name":"a.b","id":topic_id,"slot":i,"port":N}   after a broker restart
//        -> {"ok":true,"name":"a.b","id":topic_id,"slot":i,"port":N}
//   {"op":"stop","purge":false} -> {"ok":true}, then the broker shuts down. Topics and their messages stay
//        for the next broker; with "purge":true it removes every segment of the domain as it exits.
// Replies that name a resource echo it ("name", "id", "slot", "port"), and the client checks them.
// Requests are at most kMaxFrame bytes; replies at most kMaxReplyFrame.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "shmbus/result.hpp"

namespace shmbus::control {

inline constexpr int kProtocolVersion = 2;
inline constexpr std::size_t kMaxFrame = 64 * 1024;       // a request (what the broker accepts)
inline constexpr std::size_t kMaxReplyFrame = 16u << 20;  // a reply (a topic list of 1024 topics fits)

// <domain dir>/broker.sock (the directory is created if missing).
Result<std::string> socket_path(std::string_view domain);

// Connect to a broker's socket. Errc::unavailable when nobody listens (ENOENT, ECONNREFUSED).
Result<int> connect_socket(const std::string& path);

Status send_frame(int fd, const nlohmann::json& message);
// Wait up to `timeout` for one whole frame of at most `max` bytes. Errc::closed on EOF, too_large /
// protocol_error on bad frames.
Result<nlohmann::json> recv_frame(int fd, std::chrono::milliseconds timeout,
                                  std::size_t max = kMaxReplyFrame);

// send + recv of one request. Adds "req_id" (from a process-wide counter, so ids increase on every
// connection) unless the request has one; replies with an older req_id are dropped as stale, a reply with
// a newer one or none is a protocol error. A reply with "ok": false becomes an Error with its code and
// message. Errc::timed_out leaves the connection usable: the late reply is dropped by the next call.
Result<nlohmann::json> call(int fd, const nlohmann::json& request, std::chrono::milliseconds timeout);
// The next request id of this process (what call() uses).
std::uint64_t next_request_id() noexcept;

// An error reply frame.
nlohmann::json error_reply(const Error& e);

}  // namespace shmbus::control
