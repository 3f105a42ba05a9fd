// The same grammY bot as a Lambda function: Botline's worker function invokes it with each
// update as the payload (BOTLINE_HANDLER_FUNCTION, or the CDK app's -c handlerFunction=…), and
// the call grammY puts in its webhook reply is the function's result, which Botline sends to
// Telegram exactly once.
//
//   BOT_TOKEN=…  [BOT_INFO='{"id":…,"is_bot":true,…}']  handler: dist/lambda.handler
//
// BOT_INFO (getMe's result) spares a getMe at each cold start; without it the bot asks once.
// TELEGRAM_API_ROOT points grammY at another Bot API server (a test stand-in).
import { Bot } from "grammy";
import type { Update } from "grammy/types";

const token = process.env.BOT_TOKEN;
if (!token) {
  throw new Error("BOT_TOKEN is not set");
}

const bot = new Bot(token, {
  botInfo: process.env.BOT_INFO ? JSON.parse(process.env.BOT_INFO) : undefined,
  client: {
    apiRoot: process.env.TELEGRAM_API_ROOT ?? "https://api.telegram.org",
    // The first call a handler makes goes in the answer: Botline sends it once.
    canUseWebhookReply: () => true,
  },
});

bot.command("start", (ctx) => ctx.reply(`Hi ${ctx.from?.first_name ?? "there"}!`));
bot.command("fail", () => {
  throw new Error("the handler failed on purpose");
});
bot.on("message:text", (ctx) => ctx.reply(`echo: ${ctx.message.text}`));

/** Lambda's entry point: the update in, the Bot API call to send (or null) out. */
export const handler = async (update: Update): Promise<unknown> => {
  if (!bot.isInited()) {
    await bot.init();
  }
  let answer: string | undefined;
  await bot.handleUpdate(update, {
    send: (body) => {
      answer = body;
    },
  });
  return answer === undefined ? null : JSON.parse(answer);
};
