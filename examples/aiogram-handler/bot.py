"""An aiogram bot as it would run on its own webhook, put behind Botline unchanged.

Botline takes Telegram's webhook, makes each update durable and POSTs it here; the call a
handler returns (aiogram's webhook answer, which aiogram writes as multipart/form-data) is
sent to Telegram by Botline, exactly once.

    BOT_TOKEN=…  SECRET_TOKEN=…  PORT=3001  .venv/bin/python bot.py
    BOTLINE_HANDLER_URL=http://127.0.0.1:3001/bot BOTLINE_HANDLER_SECRET_TOKEN=… botline serve

TELEGRAM_API_ROOT points aiogram at another Bot API server (a test stand-in).
"""

import os

from aiogram import Bot, Dispatcher, F
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import CommandStart
from aiogram.types import Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

dp = Dispatcher()


# Returning the method, not awaiting it, puts the call in the webhook's answer.
@dp.message(CommandStart())
async def start(message: Message):
    return message.answer(f"Hi {message.from_user.first_name}!")


@dp.message(F.text)
async def echo(message: Message):
    return message.answer(f"echo: {message.text}")


def main() -> None:
    api = os.environ.get("TELEGRAM_API_ROOT", "https://api.telegram.org")
    session = AiohttpSession(api=TelegramAPIServer.from_base(api))
    bot = Bot(os.environ["BOT_TOKEN"], session=session)
    app = web.Application()
    # handle_in_background=False: the answer waits for the handler, and carries its call.
    SimpleRequestHandler(
        dispatcher=dp,
        bot=bot,
        secret_token=os.environ.get("SECRET_TOKEN"),
        handle_in_background=False,
    ).register(app, path="/bot")
    setup_application(app, dp, bot=bot)
    # Not bot.set_webhook(): Telegram's webhook points at Botline.
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "3001")), print=None)


if __name__ == "__main__":
    main()
