# The console's browser test (gateway/tests/console.rs runs it): Selenium
# and headless Chromium, step by step; prints NEED_CODE and reads the
# caller's code on stdin, prints the PIN shown once, then DONE.
import sys, os
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from selenium.webdriver.support import expected_conditions as EC

base, shots, admin, helpdesk = sys.argv[1:5]
opts = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1000"]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
w = WebDriverWait(d, 10)
def shot(name):
    d.save_screenshot(os.path.join(shots, name + ".png"))
def text(id_):
    return d.find_element(By.ID, id_).text
def sign_in(key):
    f = d.find_element(By.ID, "key"); f.clear(); f.send_keys(key)
    d.find_element(By.CSS_SELECTOR, "#signin-form button").click()
try:
    d.get(base + "/console/")
    w.until(EC.visibility_of_element_located((By.ID, "signin")))
    shot("1-signin")
    sign_in("not-a-key")
    w.until(lambda _: "not a help-desk or admin key" in text("signin-error"))
    shot("2-signin-refused")
    sign_in(helpdesk)
    w.until(EC.visibility_of_element_located((By.ID, "desk")))
    s = d.find_element(By.ID, "subject"); s.send_keys("ann")
    d.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    w.until(EC.visibility_of_element_located((By.ID, "user")))
    w.until(lambda _: "locked" in text("tokens"))
    assert "Ann Lee" in text("user-title"), text("user-title")
    methods = text("methods")
    assert "sms" in methods and "5550100" not in methods, methods
    assert "No PIN." in text("pin-state"), text("pin-state")
    shot("3-user")
    # A help-desk key may not reset a PIN.
    d.find_element(By.ID, "pin-reset").click()
    w.until(lambda _: "admin" in text("user-error"))
    # Verify the caller: another number than the user's, so a code is sent.
    d.find_element(By.ID, "caller-id").send_keys("+1 206 555 0123")
    d.find_element(By.CSS_SELECTOR, "#verify-form button").click()
    w.until(EC.visibility_of_element_located((By.ID, "code-form")))
    assert "sms" in text("verify-status"), text("verify-status")
    shot("4-code-sent")
    print("NEED_CODE", flush=True)
    code = sys.stdin.readline().strip()
    d.find_element(By.ID, "code").send_keys("000000" if code != "000000" else "111111")
    d.find_element(By.CSS_SELECTOR, "#code-form button").click()
    w.until(lambda _: "tries left" in text("verify-result"))
    d.find_element(By.ID, "code").send_keys(code)
    d.find_element(By.CSS_SELECTOR, "#code-form button").click()
    w.until(lambda _: "Verified: the caller read the right code." in text("verify-result"))
    shot("5-verified")
    # An admin: reset the PIN (shown once) and the locked token.
    d.find_element(By.ID, "signout").click()
    w.until(EC.visibility_of_element_located((By.ID, "signin")))
    assert d.execute_script("return sessionStorage.length") == 0
    sign_in(admin)
    w.until(EC.visibility_of_element_located((By.ID, "desk")))
    d.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    w.until(EC.visibility_of_element_located((By.ID, "user")))
    d.find_element(By.ID, "pin-reset").click()
    w.until(lambda _: "New PIN, shown once:" in text("pin-new"))
    pin = text("pin-new").split(":")[-1].strip()
    assert len(pin) == 5 and pin.isdigit(), pin
    w.until(lambda _: "*****" in text("pin-state"))
    shot("6-pin-reset")
    d.find_element(By.CSS_SELECTOR, "#tokens button").click()
    w.until(lambda _: "active" in text("tokens"))
    shot("7-token-reset")
    # Looking the user up again shows the PIN masked only.
    d.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    w.until(lambda _: not d.find_element(By.ID, "pin-new").is_displayed())
    assert pin not in d.page_source
    print("PIN " + pin, flush=True)
    print("DONE", flush=True)
finally:
    d.quit()
