// A grammY bot as it would run on its own webhook, put behind Botline unchanged: Botline takes
// Telegram's webhook, makes each update durable, and POSTs it here; the reply grammY writes into
// the webhook's answer (its "webhook reply") is sent to Telegram by Botline, exactly once.
//
//   BOT_TOKEN=…  SECRET_TOKEN=…  PORT=3000  node dist/bot.js
//   BOTLINE_HANDLER_URL=http://127.0.0.1:3000/ BOTLINE_HANDLER_SECRET_TOKEN=… botline serve
//
// TELEGRAM_API_ROOT points grammY at another Bot API server (a test stand-in).
import { createServer } from "node:http";
import { Bot, webhookCallback } from "grammy";

const token = process.env.BOT_TOKEN;
if (!token) {
  console.error("BOT_TOKEN is not set");
  process.exit(1);
}
const port = Number(process.env.PORT ?? 3000);
const secretToken = process.env.SECRET_TOKEN;

const bot = new Bot(token, {
  client: {
    apiRoot: process.env.TELEGRAM_API_ROOT ?? "https://api.telegram.org",
    // Every call a handler makes first goes in the webhook's answer: Botline sends it once.
    canUseWebhookReply: () => true,
  },
});

bot.command("start", (ctx) => ctx.reply(`Hi ${ctx.from?.first_name ?? "there"}!`));
bot.on("message:text", (ctx) => ctx.reply(`echo: ${ctx.message.text}`));

// Not bot.start() nor setWebhook: Telegram's webhook points at Botline.
const server = createServer(webhookCallback(bot, "http", { secretToken }));
server.listen(port, "127.0.0.1", () => console.log(`grammY handler listening on ${port}`));
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
