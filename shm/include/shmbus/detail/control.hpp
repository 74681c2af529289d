// The control plane: one Unix stream socket per domain (<runtime>/<domain>/broker.sock) between each
// client and the broker.
//
// Framing: a 4-byte little-endian length, then that many bytes of one UTF-8 JSON object. A frame longer
// than kMaxFrame, or one that is not a JSON object, is a protocol error: the broker answers with an
// error frame and closes that connection (it never stops for a bad client).
//
// Protocol version 1. Every request has "op"; every reply has "ok" (true/false); a failed reply has
// "code" (an errc_name(), e.g. "not_found") and "error" (a message naming the thing and the fix).
//   {"op":"hello","version":1,"client":"<name>"}         first frame of a connection; reply:
//        {"ok":true,"version":1,"broker_pid":N,"domain":"d"}. A version the broker does not speak gets
//        {"ok":false,"code":"version_mismatch",...}. The broker learns pid/uid/gid from SO_PEERCRED and
//        watches the pid with a pidfd.
//   {"op":"status"}     -> {"ok":true,"pid":N,"domain":"d","uptime_s":X,"clients":N,"topics":N,
//                           "autostart":bool,"runtime_dir":"..."}
//   {"op":"topics"}     -> {"ok":true,"topics":[{"name","id","kind","depth","max_size","overflow",
//                           "max_subscribers","subscribers","published","delivered","acked","dropped",
//                           "redelivered","queued","in_flight"}...]}
//   {"op":"topic_create","name":"a.b","kind":"stream|queue","depth":N,"max_size":N,
//                        "overflow":"drop-oldest|block","max_subscribers":N}   (all but name optional)
//                       -> {"ok":true,"topic":{...as in topics...}}
//   {"op":"topic_delete","name":"a.b"} -> {"ok":true}
//   {"op":"subscribe","name":"a.b","port":N} -> {"ok":true,"id":topic_id,"slot":i}
//   {"op":"unsubscribe","name":"a.b","slot":i} -> {"ok":true}
//   {"op":"reattach","name":"a.b","id":topic_id,"slot":i,"port":N}   after a broker restart
//   {"op":"stop"} -> {"ok":true}, then the broker shuts down
// Requests are at most kMaxFrame bytes; replies at most kMaxReplyFrame.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "shmbus/result.hpp"

namespace shmbus::control {

inline constexpr int kProtocolVersion = 1;
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

// send + recv; a reply with "ok": false becomes an Error with its code and message.
Result<nlohmann::json> call(int fd, const nlohmann::json& request, std::chrono::milliseconds timeout);

// An error reply frame.
nlohmann::json error_reply(const Error& e);

}  // namespace shmbus::control
