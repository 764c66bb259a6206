"""The chat page as the browser tests drive it: ``ChatPage(driver, server)`` wraps one
Selenium WebDriver showing http://<WebSocket port>/ and offers what a user does (sign in,
befriend, open a chat, send, react, edit, recall) and what a user sees (messages, unread
badges, typing, receipts), by the page's element ids and classes
(imsrv/web/static/index.html and js/view.js).

Every wait is a WebDriverWait on a DOM condition (never a fixed sleep); its message says
what was awaited, and the failure screenshot (conftest.py) shows the page.
"""
import json

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from harness.users import PASSWORD

WAIT = 15.0


class ChatPage:
    def __init__(self, driver, server):
        self.d = driver
        self.server = server
        self.url = f"http://{server.host}:{server.ws_port}/"
        self.user = None

    # ------------------------------------------------------------------- waiting

    def wait(self, cond, what, timeout=WAIT):
        """Wait until ``cond()`` is truthy (stale elements retried); -> its value."""
        def check(_):
            try:
                return cond()
            except StaleElementReferenceException:
                return False
        return WebDriverWait(self.d, timeout).until(check, message=f"{self.d.who}: waited {timeout}s for {what}")

    def css(self, selector):
        return self.d.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector):
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def shot(self, artifacts, name):
        path = artifacts / f"{name}-{self.d.who}.png"
        self.d.save_screenshot(str(path))
        return path

    def console_errors(self):
        """Errors the page logged (JavaScript exceptions, failed loads, CSP violations)."""
        return [e["message"] for e in self.d.get_log("browser") if e["level"] == "SEVERE"]

    # ------------------------------------------------------------------- signing in

    def open(self):
        self.d.get(self.url)
        self.wait(lambda: self.js("return document.body.dataset.screen"), "the page to start")
        return self

    def conn(self):
        return self.js("return document.body.dataset.conn || ''")

    def wait_online(self):
        self.wait(lambda: self.conn() == "online", "the gateway connection to be online")

    def _auth(self, tab, user, password, name=None):
        self.open()
        self.wait(lambda: self.one("#auth").is_displayed(), "the sign-in form")
        self.one(tab).click()
        self.one("#auth-user").send_keys(user)
        if name:
            self.one("#auth-name").send_keys(name)
        self.one("#auth-password").send_keys(password)
        self.one("#auth-submit").click()
        self.wait(lambda: self.js("return document.body.dataset.screen") == "chat"
                  or self.one("#auth-error").text, "signing in")
        assert self.js("return document.body.dataset.screen") == "chat", self.one("#auth-error").text
        self.user = user
        self.wait_online()
        return self

    def register(self, user, name=None, password=PASSWORD):
        return self._auth("#tab-register", user, password, name)

    def login(self, user, password=PASSWORD):
        return self._auth("#tab-login", user, password)

    def storage(self, what):
        """This page's localStorage item imsrv:<user>:<device>:<what> (JSON), or None."""
        return json.loads(self.js("const d = localStorage.getItem('imsrv:device');"
                                  "return localStorage.getItem('imsrv:' + arguments[0] + ':' + d + ':' + arguments[1])"
                                  " || 'null'", self.user, what))

    # ------------------------------------------------------------------- sidebar

    def tab(self, name):
        self.one(f'.tabs [data-tab="{name}"]').click()

    def request_friend(self, user, message=""):
        self.tab("friends")
        self.one("#add-friend-user").send_keys(user)
        if message:
            self.one("#add-friend-msg").send_keys(message)
        self.one("#add-friend button").click()

    def accept_request(self, user):
        self.wait(lambda: self.one("#badge-requests").is_displayed(), "the friend requests badge")
        self.tab("requests")
        self.wait(lambda: self.css(f'#request-list li[data-user="{user}"]'), f"the request of {user}")
        self.one(f'#request-list li[data-user="{user}"] .accept').click()

    def friend_status(self, user):
        dots = self.css(f'#friend-list li[data-user="{user}"] .dot')
        return dots[0].get_attribute("title") if dots else None

    def conv(self, key):
        items = self.css(f'#conv-list li[data-key="{key}"]')
        return items[0] if items else None

    def unread(self, key):
        """The unread badge of conversation ``key`` ("u:user" / "g:group"): an int, 0 when none."""
        c = self.conv(key)
        if c is None:
            return 0
        badges = c.find_elements(By.CSS_SELECTOR, ".badge")
        return int(badges[0].text) if badges else 0

    def open_chat(self, key):
        self.tab("chats")
        self.wait(lambda: self.conv(key), f"conversation {key} in the list")
        self.conv(key).click()
        self.wait(lambda: self.one("#chat-open").is_displayed() and self.js(
            "return !document.getElementById('older').hidden"), f"chat {key} to open")

    def open_friend(self, user):
        self.tab("friends")
        self.wait(lambda: self.css(f'#friend-list li[data-user="{user}"]'), f"{user} in the friends list")
        self.one(f'#friend-list li[data-user="{user}"]').click()
        self.wait(lambda: self.one("#chat-open").is_displayed(), f"the chat with {user}")

    # ------------------------------------------------------------------- the chat

    def type(self, text):
        self.one("#input").send_keys(text)

    def send(self, text):
        self.one("#input").send_keys(text + "\n")

    def texts(self):
        return [e.text for e in self.css("#msg-list .msg .text")]

    def wait_text(self, text, what=None):
        self.wait(lambda: text in self.texts(), what or f"message {text!r}")

    def bubble(self, text):
        """The .msg row whose text is ``text``."""
        for row in self.css("#msg-list .msg"):
            t = row.find_elements(By.CSS_SELECTOR, ".text")
            if t and t[0].text == text:
                return row
        return None

    def status_of(self, text):
        """The delivery mark of my message ``text``: pending, sent, read or failed."""
        row = self.bubble(text)
        marks = row.find_elements(By.CSS_SELECTOR, ".status") if row else []
        return (marks[0].get_attribute("class").replace("status", "").strip()) if marks else None

    def _act(self, text, selector):
        row = self.bubble(text)
        ActionChains(self.d).move_to_element(row).perform()
        self.wait(lambda: row.find_element(By.CSS_SELECTOR, selector).is_displayed(), f"{selector} on {text!r}")
        row.find_element(By.CSS_SELECTOR, selector).click()

    def react(self, text, emoji):
        self._act(text, f'.act.react[data-emoji="{emoji}"]')

    def reactions(self, text):
        row = self.bubble(text)
        if row is None:
            return {}
        return {r.get_attribute("data-emoji"): int(r.find_element(By.CSS_SELECTOR, ".count").text)
                for r in row.find_elements(By.CSS_SELECTOR, ".reaction")}

    def edit(self, text, new_text):
        self._act(text, ".act.edit")
        self.wait(lambda: self.one("#edit-bar").is_displayed(), "the edit bar")
        box = self.one("#input")
        box.clear()
        box.send_keys(new_text + "\n")

    def recall(self, text):
        self._act(text, ".act.recall")
        self.wait(lambda: self.css("#recall-yes"), "the recall confirmation")
        self.one("#recall-yes").click()

    def header_sub(self):
        return self.one("#chat-sub").text

    def set_offline(self, offline):
        """Cut (or restore) this browser's network: Chrome's network emulation, which also
        fires the page's offline/online events."""
        self.d.execute_cdp_cmd("Network.enable", {})
        self.d.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
