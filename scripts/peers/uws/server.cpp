// The uWebSockets peer for scripts/compare.sh: an echo + broadcast server on uWS, written the
// way uWS is normally used: one App, one event loop, one thread (so one core), pub/sub through
// uWS's own topic tree. It serves the same URLs as the gateway for what compare.sh measures:
//
//   GET  /ws/chat/{room}  WebSocket, subscribed to topic "chat/{room}"; every text or binary
//                         message it sends goes to everyone in the room, sender included
//                         (app.publish, not ws->publish, which would skip the sender), with the
//                         same opcode.
//   GET  /echo            WebSocket; every message is echoed with the same opcode.
//   POST /publish/{topic} HTTP (keep-alive); the body (at most 64 KiB) is published to the
//                         topic, as text when it is UTF-8, else binary; the answer is
//                         {"topic":..,"seq":..,"subscribers":..} like the gateway's, seq
//                         counting per topic from 1. So `/ws/chat/x` is fed by
//                         `POST /publish/chat/x`, as on the gateway.
//
// Usage: uws-peer [PORT [THREADS]]   (default 9001 and 1; listens on 127.0.0.1 only)
//
// THREADS > 1 runs one App per thread on the same port (uSockets sets SO_REUSEPORT, so the
// kernel spreads connections over the threads), the way uWS's own threaded examples do. A publish
// (HTTP or chat) goes to its own thread's App at once and to every other thread's through that
// loop's defer queue; seq counts per topic across threads; "subscribers" in the answer counts
// the publishing thread's only (the others' counts are not readable from it).
//
// This file is our own code; uWebSockets itself stays outside the repository and is compiled
// in by scripts/peers/uws/build.sh from a checkout given on its command line.
//
// Settings, chosen to match the gateway's defaults (gateway/src/main.rs):
//   compression      DISABLED (uWS's default). The gateway only negotiates permessage-deflate
//                    when a client offers it, and loadgen never offers it, so both sides run
//                    uncompressed in compare.sh.
//   maxPayloadLength 64 KiB, the gateway's --max-message (uWS closes larger messages, 1009).
//   maxBackpressure  1 MiB, the gateway's --max-queued. The semantics differ: past the limit
//                    the gateway stops reading from the connection, uWS drops the message
//                    (send/publish skips that socket) and keeps the connection
//                    (closeOnBackpressureLimit = false, uWS's default).
//   idleTimeout      60 s, the gateway's --pong-timeout; with sendPingsAutomatically uWS pings
//                    16 s before it (at 44 s; the gateway pings after 54 s of silence).
#include "App.h"

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

struct PerSocket {
    // Topic of a /ws/chat/ socket; empty for /echo.
    std::string topic;
};

constexpr unsigned int kMaxMessage = 64 * 1024;
constexpr unsigned int kMaxQueued = 1024 * 1024;
constexpr unsigned short kIdleTimeout = 60;

bool is_utf8(std::string_view s) {
    size_t i = 0, n = s.size();
    while (i < n) {
        unsigned char c = (unsigned char) s[i];
        size_t len;
        unsigned int cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
        else return false;
        if (i + len > n) return false;
        for (size_t k = 1; k < len; k++) {
            unsigned char d = (unsigned char) s[i + k];
            if ((d & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (d & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return false;
        }
        i += len;
    }
    return true;
}

std::string json_string(std::string_view s) {
    // Topics are [A-Za-z0-9_.-/] in practice; escape anything else anyway.
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { out += '\\'; out += (char) c; }
        else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); out += b; }
        else out += (char) c;
    }
    return out + "\"";
}

uWS::App::WebSocketBehavior<PerSocket> behavior() {
    uWS::App::WebSocketBehavior<PerSocket> b = {};
    b.compression = uWS::DISABLED;
    b.maxPayloadLength = kMaxMessage;
    b.idleTimeout = kIdleTimeout;
    b.maxBackpressure = kMaxQueued;
    b.closeOnBackpressureLimit = false;
    b.resetIdleTimeoutOnSend = false;
    b.sendPingsAutomatically = true;
    return b;
}

struct Thread {
    uWS::Loop *loop = nullptr;
    uWS::App *app = nullptr;
};

// Every thread's loop and App, filled before any thread serves (a barrier), read-only after.
std::vector<Thread> threads;
std::mutex seqs_mutex;
std::unordered_map<std::string, unsigned long long> seqs;

// Publishes to this thread's App now and to the other threads' through their defer queues.
void publish_all(size_t self, std::string_view topic, std::string_view message, uWS::OpCode op) {
    threads[self].app->publish(topic, message, op);
    if (threads.size() == 1) return;
    auto t = std::make_shared<std::string>(topic);
    auto m = std::make_shared<std::string>(message);
    for (size_t i = 0; i < threads.size(); i++) {
        if (i == self) continue;
        uWS::App *app = threads[i].app;
        threads[i].loop->defer([app, t, m, op] { app->publish(*t, *m, op); });
    }
}

void serve(size_t self, int port, std::barrier<> &ready) {
    uWS::App app;

    auto echo = behavior();
    echo.message = [](auto *ws, std::string_view message, uWS::OpCode op) {
        ws->send(message, op);
    };
    app.ws<PerSocket>("/echo", std::move(echo));

    auto chat = behavior();
    chat.upgrade = [](auto *res, auto *req, auto *context) {
        std::string topic = "chat/" + std::string(req->getUrl().substr(sizeof("/ws/chat/") - 1));
        res->template upgrade<PerSocket>({std::move(topic)},
                                         req->getHeader("sec-websocket-key"),
                                         req->getHeader("sec-websocket-protocol"),
                                         req->getHeader("sec-websocket-extensions"), context);
    };
    chat.open = [](auto *ws) { ws->subscribe(ws->getUserData()->topic); };
    chat.message = [self](auto *ws, std::string_view message, uWS::OpCode op) {
        publish_all(self, ws->getUserData()->topic, message, op);
    };
    app.ws<PerSocket>("/ws/chat/*", std::move(chat));

    app.post("/publish/*", [self, &app](auto *res, auto *req) {
        std::string topic(req->getUrl().substr(sizeof("/publish/") - 1));
        auto body = std::make_shared<std::string>();
        res->onAborted([] {});
        res->onData([self, &app, res, topic = std::move(topic), body](std::string_view chunk, bool last) {
            if (body->size() + chunk.size() > kMaxMessage) {
                // Answer once, then ignore the rest of the body (the connection is closed).
                if (body->size() <= kMaxMessage) {
                    body->resize(kMaxMessage + 1);
                    res->writeStatus("413 Payload Too Large")->writeHeader("Connection", "close")->end("");
                }
                return;
            }
            body->append(chunk);
            if (!last) return;
            uWS::OpCode op = is_utf8(*body) ? uWS::OpCode::TEXT : uWS::OpCode::BINARY;
            publish_all(self, topic, *body, op);
            unsigned long long seq;
            {
                std::lock_guard<std::mutex> lock(seqs_mutex);
                seq = ++seqs[topic];
            }
            std::string answer = "{\"topic\":" + json_string(topic) + ",\"seq\":" + std::to_string(seq) +
                                 ",\"subscribers\":" + std::to_string(app.numSubscribers(topic)) + "}";
            res->writeHeader("Content-Type", "application/json")->end(answer);
        });
    });

    app.any("/*", [](auto *res, auto * /*req*/) { res->writeStatus("404 Not Found")->end("not found\n"); });

    app.listen("127.0.0.1", port, [port, self](auto *listen_socket) {
        if (listen_socket) {
            if (self == 0) std::fprintf(stderr, "uws-peer: listening on 127.0.0.1:%d\n", port);
        } else {
            std::fprintf(stderr, "uws-peer: cannot listen on 127.0.0.1:%d\n", port);
            std::exit(1);
        }
    });
    threads[self] = Thread{uWS::Loop::get(), &app};
    ready.arrive_and_wait();
    app.run();
}

}  // namespace

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 9001;
    int n = argc > 2 ? std::atoi(argv[2]) : 1;
    if (port <= 0 || port > 65535 || n < 1 || n > 64) {
        std::fprintf(stderr, "usage: %s [PORT [THREADS]]\n", argv[0]);
        return 2;
    }
    threads.resize(n);
    std::barrier<> ready(n);
    std::vector<std::thread> others;
    for (int i = 1; i < n; i++) others.emplace_back([i, port, &ready] { serve(i, port, ready); });
    serve(0, port, ready);
    for (auto &t : others) t.join();
    return 0;
}
