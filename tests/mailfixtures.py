# ruff: noqa: E501  (header lines are as long as real mail systems write them)
"""Labelled e-mail, written for this project in the shapes real mail systems produce
(header sets modelled on Postfix, Exim, qmail, Sendmail, Exchange / Microsoft 365, Gmail,
iCloud, Zimbra, Dovecot Sieve, cPanel, Thunderbird, Apple Mail, iOS, Outlook, Yahoo,
mailing lists and Google Groups). Each fixture says which folder it lands in and what the
IMAP connector must make of it: an event kind, or `skip:<reason>`.

The team is `support@shop.example` (and the whole `shop.example` domain).
"""

from __future__ import annotations

from dataclasses import dataclass

TEAM = "Shop Support <support@shop.example>"
DATE = "Mon, 02 Nov 2026 09:{:02d}:00 +0000"


@dataclass(frozen=True)
class Fixture:
    name: str
    folder: str  # INBOX or Sent
    expect: str  # customer_message | agent_reply | auto_reply | skip:<reason>
    raw: bytes
    message_id: str | None


_n = 0


def mail(
    name: str,
    expect: str,
    headers: list[tuple[str, str]],
    body: str = "Hello,\r\n\r\nplease see below.\r\n",
    folder: str = "INBOX",
    msgid: str | None = "auto",
) -> Fixture:
    global _n
    _n += 1
    if msgid == "auto":
        msgid = f"<fx{_n:03d}.{name}@mail.test>"
    lines = [f"{k}: {v}" for k, v in headers]
    if msgid and not any(k.lower() == "message-id" for k, _ in headers):
        lines.append(f"Message-ID: {msgid}")
    if not any(k.lower() == "date" for k, _ in headers):
        lines.append(f"Date: {DATE.format(_n % 60)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
    return Fixture(name, folder, expect, raw, msgid)


def _dsn(boundary: str, original_to: str, original_id: str, status: str = "5.1.1") -> str:
    return (
        f"This is a MIME-encapsulated message.\r\n\r\n--{boundary}\r\n"
        "Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        f"<{original_to}>: host mx.example.net said: 550 {status} User unknown\r\n\r\n"
        f"--{boundary}\r\nContent-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx1.mail.test\r\n\r\n"
        f"Final-Recipient: rfc822; {original_to}\r\nAction: failed\r\nStatus: {status}\r\n\r\n"
        f"--{boundary}\r\nContent-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original_id}\r\nFrom: {TEAM}\r\nTo: {original_to}\r\n\r\n"
        f"--{boundary}--\r\n"
    )


def fixtures() -> list[Fixture]:
    f: list[Fixture] = []
    add = f.append
    # -- bounces (delivery status notifications) ---------------------------------------
    add(
        mail(
            "postfix-dsn",
            "skip:reply_bounced",
            [
                ("Return-Path", "<>"),
                ("From", "MAILER-DAEMON@mx1.mail.test (Mail Delivery System)"),
                ("Subject", "Undelivered Mail Returned to Sender"),
                ("To", "support@shop.example"),
                ("Auto-Submitted", "auto-replied"),
                ("MIME-Version", "1.0"),
                (
                    "Content-Type",
                    'multipart/report; report-type=delivery-status;\r\n boundary="A1B2C3.1730538000/mx1.mail.test"',
                ),
            ],
            _dsn("A1B2C3.1730538000/mx1.mail.test", "ann@gone.example", "<r1@shop.example>"),
        )
    )
    add(
        mail(
            "postfix-dsn-no-auto-submitted",
            "skip:reply_bounced",
            [
                ("From", "MAILER-DAEMON@smtp.isp.test (Mail Delivery System)"),
                ("Subject", "Undelivered Mail Returned to Sender"),
                ("To", "support@shop.example"),
                ("MIME-Version", "1.0"),
                (
                    "Content-Type",
                    'multipart/report; report-type=delivery-status; boundary="7F2A1C0D3.1730538111/smtp.isp.test"',
                ),
            ],
            _dsn("7F2A1C0D3.1730538111/smtp.isp.test", "bo@typo.example", "<r2@shop.example>"),
        )
    )
    add(
        mail(
            "exim-failed",
            "skip:reply_bounced",
            [
                ("Return-path", "<>"),
                ("From", "Mail Delivery System <Mailer-Daemon@mail.hoster.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Mail delivery failed: returning message to sender"),
                ("X-Failed-Recipients", "carla@closed.example"),
                ("Auto-Submitted", "auto-replied"),
                ("Content-Type", "text/plain; charset=us-ascii"),
            ],
            "This message was created automatically by mail delivery software.\r\n\r\n"
            "A message that you sent could not be delivered to one or more of its\r\n"
            "recipients. This is a permanent error.\r\n",
        )
    )
    add(
        mail(
            "exim-delayed-to-outsider",
            "skip:bounce",
            [
                ("From", "Mail Delivery System <Mailer-Daemon@relay.partner.test>"),
                ("To", "orders@partner.test"),
                ("Cc", "support@shop.example"),
                ("Subject", "Warning: message 1vXyZa-0003Kd-2m delayed 24 hours"),
                ("X-Failed-Recipients", "dave@slow.example"),
                ("Content-Type", "text/plain; charset=us-ascii"),
            ],
        )
    )
    add(
        mail(
            "qmail-failure",
            "skip:reply_bounced",
            [
                ("From", "MAILER-DAEMON@mail.provider.test"),
                ("To", "support@shop.example"),
                ("Subject", "failure notice"),
            ],
            "Hi. This is the qmail-send program at mail.provider.test.\r\n"
            "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n",
        )
    )
    add(
        mail(
            "sendmail-returned",
            "skip:reply_bounced",
            [
                ("From", "Mail Delivery Subsystem <MAILER-DAEMON@host.example.org>"),
                ("To", "<support@shop.example>"),
                ("Subject", "Returned mail: see transcript for details"),
                ("Auto-Submitted", "auto-generated (failure)"),
                ("MIME-Version", "1.0"),
                (
                    "Content-Type",
                    'multipart/report; report-type=delivery-status;\r\n\tboundary="4A2BqA012345.1730538222/host.example.org"',
                ),
            ],
            _dsn(
                "4A2BqA012345.1730538222/host.example.org",
                "eve@host.example.org",
                "<r3@shop.example>",
            ),
        )
    )
    add(
        mail(
            "exchange-online-ndr",
            "skip:reply_bounced",
            [
                ("From", "postmaster@contoso.onmicrosoft.test"),
                ("To", "support@shop.example"),
                ("Subject", "Undeliverable: Re: Your order 10422"),
                (
                    "Content-Type",
                    'multipart/report; report-type=delivery-status; boundary="_000_ndr"',
                ),
                ("X-MS-Exchange-Message-Is-Ndr", ""),
                ("Auto-Submitted", "auto-replied"),
                ("In-Reply-To", "<r4@shop.example>"),
                ("References", "<c4@contoso.test> <r4@shop.example>"),
            ],
            _dsn("_000_ndr", "frank@contoso.test", "<r4@shop.example>"),
        )
    )
    add(
        mail(
            "gmail-bounce",
            "skip:reply_bounced",
            [
                ("From", "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"),
                ("To", "support@shop.example"),
                ("Auto-Submitted", "auto-replied"),
                ("Subject", "Delivery Status Notification (Failure)"),
                (
                    "Content-Type",
                    'multipart/report; boundary="000000000000f1e2d3"; report-type=delivery-status',
                ),
                ("X-Failed-Recipients", "gina@gmial.test"),
            ],
            _dsn("000000000000f1e2d3", "gina@gmial.test", "<r5@shop.example>"),
        )
    )
    add(
        mail(
            "null-from",
            "skip:no_sender",
            [
                ("Return-Path", "<>"),
                ("From", "<>"),
                ("To", "support@shop.example"),
                ("Subject", "Delivery failure"),
            ],
        )
    )
    add(
        mail(
            "missing-from",
            "skip:no_sender",
            [("To", "support@shop.example"), ("Subject", "(no subject)")],
        )
    )
    add(
        mail(
            "postmaster-uppercase",
            "skip:bounce",
            [
                ("From", '"Postmaster" <POSTMASTER@Example.COM>'),
                ("To", "list-owner@lists.example.com"),
                ("Subject", "Delivery has failed to these recipients or groups"),
            ],
        )
    )
    add(
        mail(
            "zimbra-postfix-dsn-to-outsider",
            "skip:bounce",
            [
                ("From", "MAILER-DAEMON@zimbra.school.test (Mail Delivery System)"),
                ("To", "teacher@school.test"),
                ("Subject", "Undelivered Mail Returned to Sender"),
                ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="zb"'),
            ],
            _dsn("zb", "parent@old.example", "<z1@school.test>"),
        )
    )
    add(
        mail(
            "team-server-bounce",
            "skip:reply_bounced",
            [
                ("From", "MAILER-DAEMON@shop.example (Mail Delivery System)"),
                ("To", "support@shop.example"),
                ("Subject", "Undelivered Mail Returned to Sender"),
                ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="tb"'),
            ],
            _dsn("tb", "henry@nowhere.example", "<r6@shop.example>"),
        )
    )
    # -- reports: receipts and complaint feedback ------------------------------------------
    add(
        mail(
            "thunderbird-read-receipt",
            "skip:read_receipt",
            [
                ("From", "Ivy Customer <ivy@customer.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Return Receipt (displayed) - Re: Your order 10431"),
                ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Thunderbird/128.4.0"),
                (
                    "Content-Type",
                    'multipart/report; report-type=disposition-notification;\r\n boundary="------------mdn1"',
                ),
            ],
        )
    )
    add(
        mail(
            "outlook-read-receipt",
            "skip:read_receipt",
            [
                ("From", "Jack Buyer <jack@buyer.test>"),
                ("To", "Shop Support <support@shop.example>"),
                ("Subject", "Read: Your refund"),
                ("X-MS-Has-Attach", ""),
                (
                    "Content-Type",
                    'multipart/report; report-type="disposition-notification"; boundary="_002_read"',
                ),
            ],
        )
    )
    add(
        mail(
            "arf-feedback-loop",
            "skip:feedback_report",
            [
                ("From", "Mail Feedback <feedback@fbl.bigmail.test>"),
                ("To", "abuse@shop.example"),
                ("Subject", "Email Feedback Report for IP 192.0.2.10"),
                (
                    "Content-Type",
                    'multipart/report; report-type=feedback-report; boundary="part1_13d.2e68ed54_boundary"',
                ),
            ],
        )
    )
    add(
        mail(
            "arf-complaint-second-provider",
            "skip:feedback_report",
            [
                ("From", "staff@complaints.mailhost.test"),
                ("To", "fbl@shop.example"),
                ("Subject", "complaint about message from 198.51.100.7"),
                ("MIME-Version", "1.0"),
                (
                    "Content-Type",
                    'multipart/report;\r\n report-type=feedback-report;\r\n boundary="arf"',
                ),
            ],
        )
    )
    # -- out-of-office and other autoresponders ---------------------------------------------
    add(
        mail(
            "exchange-oof-pair-only",
            "skip:auto_reply",
            [
                ("From", "Kim Lee <kim.lee@corp.test>"),
                ("To", "Shop Support <support@shop.example>"),
                ("Subject", "Automatic reply: Your order 10440"),
                ("X-Auto-Response-Suppress", "All"),
                ("X-MS-Exchange-Inbox-Rules-Loop", "kim.lee@corp.test"),
                ("X-MS-Exchange-Organization-AuthAs", "Internal"),
                ("Content-Type", "text/plain; charset=us-ascii"),
            ],
            "I am out of the office until 9 November with limited access to e-mail.\r\n",
        )
    )
    add(
        mail(
            "exchange-oof-auto-submitted",
            "skip:auto_reply",
            [
                ("From", "Lars Berg <lars@firma.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Automatische Antwort: Bestellung 10441"),
                ("Auto-Submitted", "auto-replied"),
                ("X-Auto-Response-Suppress", "All"),
                ("X-MS-Exchange-Inbox-Rules-Loop", "lars@firma.test"),
            ],
        )
    )
    add(
        mail(
            "exchange-oof-set",
            "skip:auto_reply",
            [
                ("From", "Mia Rossi <mia@azienda.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Risposta automatica: Ordine 10442"),
                ("X-Auto-Response-Suppress", "DR, OOF, AutoReply"),
                ("X-MS-Exchange-Inbox-Rules-Loop", "mia@azienda.test"),
            ],
        )
    )
    add(
        mail(
            "gmail-vacation",
            "skip:auto_reply",
            [
                ("From", "Nina <nina.p@gmail.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Re: Your order 10443"),
                ("Auto-Submitted", "auto-replied"),
                ("In-Reply-To", "<r7@shop.example>"),
            ],
        )
    )
    add(
        mail(
            "icloud-vacation",
            "skip:auto_reply",
            [
                ("From", "Oscar <oscar@icloud.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Re: Your order 10444"),
                ("X-Apple-Action", "VACATION"),
                ("X-Mailer", "iCloud MailClient22F67 MailServer"),
            ],
        )
    )
    add(
        mail(
            "zimbra-oof",
            "skip:auto_reply",
            [
                ("From", "Pia Novak <pia@uni.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Out of office: Your order 10445"),
                ("Auto-Submitted", "auto-replied (zimbra; vacation)"),
                ("Precedence", "bulk"),
            ],
        )
    )
    add(
        mail(
            "sieve-vacation",
            "skip:auto_reply",
            [
                ("From", "quentin@fastmail.test"),
                ("To", "support@shop.example"),
                ("Subject", "Auto: Your order 10446"),
                ("Auto-Submitted", "auto-replied (vacation)"),
                ("Precedence", "bulk"),
            ],
        )
    )
    add(
        mail(
            "cpanel-autorespond",
            "skip:auto_reply",
            [
                ("From", "Rita <rita@smallbiz.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Thank you for your e-mail"),
                ("X-Autorespond", "Thank you for your e-mail"),
            ],
        )
    )
    add(
        mail(
            "x-autoreply-yes",
            "skip:auto_reply",
            [
                ("From", "sam@hosted.test"),
                ("To", "support@shop.example"),
                ("Subject", "Re: Your order 10447"),
                ("X-Autoreply", "yes"),
            ],
        )
    )
    add(
        mail(
            "customer-helpdesk-ack",
            "skip:auto_generated",
            [
                ("From", "Vendor Help <help@vendor.test>"),
                ("To", "support@shop.example"),
                ("Subject", "[#88812] Request received: Invoice question"),
                ("Auto-Submitted", "auto-generated"),
                ("X-Auto-Response-Suppress", "All"),
            ],
        )
    )
    add(
        mail(
            "exchange-rules-agent",
            "skip:auto_reply",
            [
                ("From", "Tom <tom@corp.test>"),
                ("To", "support@shop.example"),
                ("Subject", "FW: order 10448"),
                ("X-MS-Exchange-Generated-Message-Source", "Mailbox Rules Agent"),
            ],
        )
    )
    add(
        mail(
            "zammad-autoreply",
            "skip:auto_reply",
            [
                ("From", "Partner Desk <desk@partner.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Thanks for your email [Ticket#31002]"),
                ("X-Zammad-Is-Auto-Response", "true"),
                ("X-Loop", "yes"),
            ],
        )
    )
    add(
        mail(
            "autogenerated-reply",
            "skip:auto_reply",
            [
                ("From", "ursula@hr.test"),
                ("To", "support@shop.example"),
                ("Subject", "Abwesenheitsnotiz"),
                ("X-Autogenerated", "Reply"),
            ],
        )
    )
    add(
        mail(
            "precedence-list-then-bulk",
            "skip:bulk",
            [
                ("From", "Deals <deals@offers.test>"),
                ("To", "support@shop.example"),
                ("Subject", "Black Friday: 40% off"),
                ("Precedence", "list"),
                ("Precedence", "bulk"),
            ],
        )
    )
    add(
        mail(
            "precedence-junk",
            "skip:bulk",
            [
                ("From", "promo@spammy.test"),
                ("To", "support@shop.example"),
                ("Subject", "You won"),
                ("Precedence", "junk"),
            ],
        )
    )
    add(
        mail(
            "precedence-auto-reply",
            "skip:bulk",
            [
                ("From", "victor@oldhost.test"),
                ("To", "support@shop.example"),
                ("Subject", "Away"),
                ("Precedence", "auto_reply"),
            ],
        )
    )
    add(
        mail(
            "null-return-path-notice",
            "skip:null_return_path",
            [
                ("Return-Path", "<>"),
                ("From", '"Billing" <billing@vendor.test>'),
                ("To", "support@shop.example"),
                ("Subject", "Your invoice INV-2026-1102 is ready"),
            ],
        )
    )
    # -- no-reply senders --------------------------------------------------------------------
    for i, (addr, subject) in enumerate(
        [
            ("noreply@accounts.bank.test", "Your statement is available"),
            ("no-reply@notifications.shipper.test", "Your parcel is on its way"),
            ("DoNotReply@billing.vendor.test", "Payment received"),
            ("do_not_reply@portal.gov.test", "Your application"),
            ("noreply+t4471@tickets.saas.test", "Ticket 4471 updated"),
            ("no.reply@alerts.cloud.test", "Usage alert"),
        ]
    ):
        add(
            mail(
                f"noreply-{i}",
                "skip:noreply_sender",
                [("From", f"Notifications <{addr}>"), ("To", TEAM), ("Subject", subject)],
            )
        )
    add(
        mail(
            "marketing-bulk",
            "skip:bulk",
            [
                ("From", "Newsletter <news@brand.test>"),
                ("To", "support@shop.example"),
                ("Subject", "November news"),
                ("Precedence", "bulk"),
                ("List-Unsubscribe", "<mailto:unsubscribe@brand.test>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ],
        )
    )
    # -- people: customers -------------------------------------------------------------------
    people = [
        (
            "gmail-web",
            [
                ("From", "Wendy Park <wendy.park@gmail.test>"),
                ("X-Gm-Message-State", "AOJu0YwQh2f3s"),
                ("MIME-Version", "1.0"),
                ("Content-Type", 'multipart/alternative; boundary="000000000000a1b2c3"'),
            ],
        ),
        (
            "outlook-exchange-person-suppress-all",
            [
                ("From", "Xavier Ortiz <x.ortiz@corp.test>"),
                ("X-Auto-Response-Suppress", "All"),
                ("X-MS-Has-Attach", ""),
                ("X-MS-TNEF-Correlator", ""),
                ("Thread-Index", "AdsOAbCdEf0123456789"),
            ],
        ),
        (
            "person-forwarded-by-rule-loop-header-only",
            [
                ("From", "Yara <yara@corp.test>"),
                ("X-MS-Exchange-Inbox-Rules-Loop", "yara@corp.test"),
            ],
        ),
        (
            "apple-mail",
            [
                ("From", "Zoe Martin <zoe@me.test>"),
                ("Mime-Version", "1.0 (Mac OS X Mail 16.0 \\(3731.700.6\\))"),
                ("X-Mailer", "Apple Mail (2.3731.700.6)"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
        ),
        (
            "ios-mail",
            [("From", "Adam <adam.k@icloud.test>"), ("X-Mailer", "iPhone Mail (21E236)")],
        ),
        (
            "thunderbird",
            [
                ("From", "Beth <beth@linux.test>"),
                ("User-Agent", "Mozilla Thunderbird"),
                ("Content-Language", "en-GB"),
            ],
        ),
        (
            "outlook-com",
            [
                ("From", "Carl <carl_92@outlook.test>"),
                ("X-MS-Exchange-Organization-SCL", "1"),
                ("X-Microsoft-Antispam", "BCL:0;"),
            ],
        ),
        (
            "yahoo-mail",
            [
                ("From", "Dina <dina_r@yahoo.test>"),
                ("X-Mailer", "WebService/1.1.22806 YMailNorrin"),
            ],
        ),
        (
            "mailing-list-post",
            [
                ("From", "Eli <eli@dev.test>"),
                ("List-Id", "Users of Shop API <api-users.lists.shop-community.test>"),
                ("Precedence", "list"),
                ("Sender", "api-users-bounces@lists.shop-community.test"),
            ],
        ),
        (
            "google-group-collaborative-inbox",
            [
                ("From", "Fay <fay@customer.test>"),
                ("List-Id", "<support.shop.example>"),
                ("Precedence", "list"),
                ("Mailing-list", "list support@shop.example; contact support+owners@shop.example"),
                ("X-Google-Group-Id", "771234567890"),
            ],
        ),
        (
            "explicit-auto-submitted-no",
            [("From", "Gus <gus@customer.test>"), ("Auto-Submitted", "no")],
        ),
        ("name-like-noreply", [("From", "Noreen Replyson <noreen@customer.test>")]),
        ("postmaster-like-local-part", [("From", "Pat <postmasterjones@customer.test>")]),
        (
            "protonmail",
            [("From", "Quinn <quinn@proton.test>"), ("X-Pm-Origin", "internal")],
        ),
        (
            "outlook-ios",
            [("From", "Rosa <rosa@corp.test>"), ("X-Mailer", "Outlook for iOS and Android")],
        ),
        (
            "return-path-person",
            [("Return-Path", "<sven@customer.test>"), ("From", "Sven <sven@customer.test>")],
        ),
        (
            "follow-up-with-references",
            [
                ("From", "Wendy Park <wendy.park@gmail.test>"),
                ("In-Reply-To", "<r8@shop.example>"),
                ("References", "<fx-root@gmail.test> <r8@shop.example>"),
            ],
        ),
    ]
    for name, headers in people:
        add(
            mail(
                name,
                "customer_message",
                [*headers, ("To", TEAM), ("Subject", f"Question about my order ({name})")],
            )
        )
    # -- the team's own mail (Sent) ---------------------------------------------------------
    team = [
        ("agent-thunderbird", "agent_reply", [("User-Agent", "Mozilla Thunderbird")]),
        (
            "agent-outlook-suppress-all",
            "agent_reply",
            [("X-Auto-Response-Suppress", "All"), ("Thread-Index", "AdsOAbCdEf")],
        ),
        ("agent-apple-mail", "agent_reply", [("X-Mailer", "Apple Mail (2.3731.700.6)")]),
        ("team-autoresponder", "auto_reply", [("Auto-Submitted", "auto-replied")]),
        ("team-helpdesk-trigger", "auto_reply", [("X-Autoreply", "yes")]),
        (
            "team-agent-oof",
            "auto_reply",
            [
                ("X-Auto-Response-Suppress", "All"),
                ("X-MS-Exchange-Inbox-Rules-Loop", "agent@shop.example"),
            ],
        ),
        ("team-bulk-notice", "auto_reply", [("Precedence", "bulk")]),
    ]
    for name, expect, headers in team:
        add(
            mail(
                name,
                expect,
                [
                    ("From", TEAM),
                    *headers,
                    ("To", "Wendy Park <wendy.park@gmail.test>"),
                    ("Subject", f"Re: Question about my order ({name})"),
                ],
                folder="Sent",
            )
        )
    add(
        mail(
            "team-noreply-notification",
            "auto_reply",
            [
                ("From", "Shop <noreply@shop.example>"),
                ("To", "wendy.park@gmail.test"),
                ("Subject", "Your ticket was updated"),
            ],
            folder="Sent",
        )
    )
    return f
