// A minimal grammY bot behind grammY's own `webhookCallback(bot, "http")`, to benchmark Botline
// against: it only counts updates in memory, and acknowledges the way grammY does by default
// (200 once the middleware has run; nothing is durable).
//
//   node server.js [PORT]                 # or PORT=...; default 8082
//   WEBHOOK_SECRET=... node server.js 8082
//
// Serves POST /telegram/webhook on 127.0.0.1:PORT (checking X-Telegram-Bot-Api-Secret-Token
// through grammY's `secretToken` option when WEBHOOK_SECRET is set) and GET /count (updates
// handled so far). Telegram is never called: `botInfo` is given to the Bot, so `bot.init()` does
// not ask getMe, and the API root points at a closed local port.
import { createServer } from "node:http";
import { Bot, webhookCallback } from "grammy";

const PATH = "/telegram/webhook";
const port = Number(process.argv[2] ?? process.env.PORT ?? 8082);
const secretToken = process.env.WEBHOOK_SECRET || undefined;

const bot = new Bot("123:TEST", {
  botInfo: {
    id: 123,
    is_bot: true,
    first_name: "Peer",
    username: "peer_grammy_bot",
    can_join_groups: true,
    can_read_all_group_messages: false,
    supports_inline_queries: false,
    can_connect_to_business: false,
    has_main_web_app: false,
  },
  client: { apiRoot: "http://127.0.0.1:9" },
});

let counted = 0;
bot.use(() => {
  counted += 1;
});

const handleUpdate = webhookCallback(bot, "http", { secretToken });

const server = createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (req.method === "POST" && path === PATH) {
    handleUpdate(req, res).catch((err) => {
      console.error("grammy peer:", err);
      if (!res.headersSent) {
        res.writeHead(500).end();
      }
    });
  } else if (req.method === "GET" && path === "/count") {
    res.writeHead(200, { "content-type": "text/plain" }).end(String(counted));
  } else {
    res.writeHead(404).end();
  }
});
server.keepAliveTimeout = 75_000;

server.listen(port, "127.0.0.1", () => {
  console.error(`grammy peer: listening on http://127.0.0.1:${port}${PATH}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    console.error(`grammy peer: ${counted} updates counted`);
    process.exit(0);
  });
}
