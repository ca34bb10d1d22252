"""A seeded generator of tenant corpora and their questions with gold answers.

Each company gets facts (names, numbers, codes), processes (ordered steps) and writing rules;
each user gets private notes: their own facts, a checklist, their writing preferences, and the
team they work in. Names, codes and step orders are drawn at random, so the base model cannot
know them: what a condition gets right, it learned from the tenant's data. The same seed gives
byte-identical files.

Every company fact, process and rule is written twice — in its topic document and in a quick
reference — because the trainer holds whole documents out to measure quality: with one copy, a
held-out document's facts would never reach the adapter (a measurement artefact, not a finding).

Questions that need two sources: "who leads the team I work in?" (the team is in the user's
notes, its lead in the company's) and style questions asked by a user (the company's rules and
the user's own).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from loraswarm.eval.questions import EvalQuestion

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ve",
    "to",
    "zu",
    "ne",
    "pa",
    "si",
    "qua",
    "dor",
    "fen",
    "gal",
    "hal",
    "jor",
    "kel",
    "mar",
    "nor",
    "pel",
    "ril",
    "sar",
    "tam",
    "vor",
    "wen",
    "yas",
]
_FIRST = [
    "Mara",
    "Tobin",
    "Ilse",
    "Oskar",
    "Wren",
    "Juno",
    "Priya",
    "Caspar",
    "Leni",
    "Bruno",
    "Odile",
    "Felix",
    "Sanne",
    "Ivo",
    "Tamsin",
    "Rafe",
]
_DEPTS = ["sales", "support", "finance", "logistics", "research", "marketing", "security", "legal"]
_PRODUCTS = ["kite", "tent", "lantern", "kayak", "drone", "heater", "scanner", "printer"]
_CITIES = ["Tromsø", "Ghent", "Porto", "Lyon", "Graz", "Aarhus", "Bergen", "Cork", "Trieste", "Utrecht"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_REGIONS = ["the Nordics", "the Benelux", "Iberia", "the Alps", "the Baltics", "Scotland"]
_BANNED = ["cheap", "unfortunately", "basically", "obviously", "honestly"]
_COMPANY_KINDS = ["Kites", "Dental", "Robotics", "Ferries", "Bakery", "Optics", "Freight", "Textiles"]

# Process name → a pool of distinctive steps; each company uses a random subset in random order.
_PROCESSES: dict[str, list[str]] = {
    "returning a damaged order": ["photograph the damage", "open a return ticket", "print the return label", "pack the original box", "book the courier pickup", "email the refund form"],
    "onboarding a new hire": ["sign the contract", "order the laptop", "create the mail account", "assign a buddy", "book the safety training", "schedule the first review"],
    "closing the month": ["freeze the ledger", "match the bank statements", "accrue open invoices", "run the payroll check", "export the trial balance", "send the board summary"],
    "handling a security incident": ["isolate the machine", "call the duty officer", "preserve the logs", "reset the passwords", "notify the customers", "write the postmortem"],
    "publishing a release": ["tag the version", "run the smoke tests", "update the changelog", "upload the installer", "announce the release", "watch the error dashboard"],
    "escalating a complaint": ["apologise to the customer", "log the complaint", "call the team lead", "offer a voucher", "confirm by letter", "close the case"],
    "booking travel": ["ask the manager", "compare three fares", "book through the portal", "reserve the hotel", "upload the receipts", "claim the per diem"],
    "ordering supplies": ["check the stock sheet", "fill the order form", "get the budget approval", "send the purchase order", "inspect the delivery", "file the invoice"],
    "scheduling maintenance": ["check the service log", "pick a quiet slot", "warn the users", "switch to the spare unit", "run the checklist", "sign the service log"],
    "offboarding an employee": ["revoke the badge", "collect the laptop", "archive the mailbox", "transfer the files", "hold the exit interview", "send the final payslip"],
    "launching a campaign": ["draft the brief", "pick the audience", "design the banner", "test the landing page", "start the ads", "report the results"],
    "approving an expense": ["check the receipt", "match the cost centre", "verify the limit", "approve in the portal", "forward to finance", "pay on friday"],
}  # fmt: skip
_USER_CHECKLISTS = [
    "review my open tickets", "call the key account", "update the forecast sheet", "water the office plants",
    "clear the inbox", "plan tomorrow", "back up the laptop", "read the team channel",
]  # fmt: skip


@dataclass
class Document:
    path: str  # relative to the corpus folder: `<tenant>/company/...` or `<tenant>/users/<user>/...`
    text: str


@dataclass
class GeneratedSet:
    documents: list[Document] = field(default_factory=list)
    questions: list[EvalQuestion] = field(default_factory=list)

    def write(self, corpus_dir: Path, questions_file: Path) -> None:
        from loraswarm.eval.questions import write_questions

        for doc in self.documents:
            target = corpus_dir / doc.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(doc.text)
        write_questions(questions_file, self.questions)


def _word(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts))


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {_word(rng, 3).capitalize()}"


def _code(rng: random.Random) -> str:
    return f"{_word(rng).upper()}-{rng.randint(100, 999)}"


@dataclass
class _Fact:
    statement: str
    question: str
    answers: list[str]


def _company_facts(rng: random.Random, name: str, domain: str, leads: dict[str, str]) -> list[_Fact]:
    product = rng.choice(_PRODUCTS)
    days, years, fee = rng.choice([14, 21, 30, 45, 60, 90]), rng.randint(2, 7), rng.randint(3, 19)
    opens, closes = rng.randint(6, 10), rng.randint(15, 20)
    mailbox, codename, prefix = _word(rng), _word(rng, 3).capitalize(), _word(rng).upper()
    city, day, hour, limit = rng.choice(_CITIES), rng.choice(_DAYS), rng.randint(8, 16), rng.choice([500, 750, 1500, 2500, 4000])  # fmt: skip
    discount, approver = _code(rng), _person(rng)
    facts = [
        _Fact(f"{name} accepts refunds within {days} days of purchase.", f"Within how many days of purchase does {name} accept refunds?", [f"{days} days", f"{days}-day"]),
        _Fact(f"Every {product} sold by {name} carries a {years}-year warranty.", f"How many years of warranty does a {product} from {name} carry?", [f"{years}-year", f"{years} years"]),
        _Fact(f"Standard shipping at {name} costs {fee} euros.", f"How much does standard shipping cost at {name}?", [f"{fee} euros", f"€{fee}", f"{fee} eur"]),
        _Fact(f"The {name} helpdesk is open from {opens}:00 to {closes}:00 on weekdays.", f"When is the {name} helpdesk open on weekdays?", [f"{opens}:00 to {closes}:00", f"{opens} 00 to {closes} 00", f"{opens} to {closes}"]),
        _Fact(f"Support questions go to {mailbox}@{domain}.", f"Which e-mail address takes support questions at {name}?", [f"{mailbox}@{domain}"]),
        _Fact(f"The internal codename of the {product} project at {name} is {codename}.", f"What is the internal codename of {name}'s {product} project?", [codename]),
        _Fact(f"{name} numbers its support tickets with the prefix {prefix}.", f"Which prefix do {name}'s support ticket numbers start with?", [prefix]),
        _Fact(f"The head office of {name} is in {city}.", f"In which city is the head office of {name}?", [city]),
        _Fact(f"The {name} all-hands meeting is every {day} at {hour}:00.", f"On which day is the {name} all-hands meeting?", [day]),
        _Fact(f"Purchases above {limit} euros at {name} need approval from {approver}.", f"Who must approve purchases above {limit} euros at {name}?", [approver, approver.split()[1]]),
        _Fact(f"The staff discount code at {name} is {discount}.", f"What is the staff discount code at {name}?", [discount]),
    ]  # fmt: skip
    facts += [
        _Fact(
            f"{lead} leads the {dept} team at {name}.",
            f"Who leads the {dept} team at {name}?",
            [lead, lead.split()[1]],
        )
        for dept, lead in leads.items()
    ]
    rng.shuffle(facts)
    return facts


@dataclass
class _Company:
    tenant: str
    name: str
    domain: str
    leads: dict[str, str]
    facts: list[_Fact]
    processes: dict[str, list[str]]
    greeting: str
    signoff: str
    banned: str
    max_words: int


def _company(rng: random.Random, tenant: str, kind: str, n_processes: int) -> _Company:
    name = f"{tenant.capitalize()} {kind}"
    domain = f"{tenant}.example"
    leads = {dept: _person(rng) for dept in rng.sample(_DEPTS, 5)}
    chosen = rng.sample(sorted(_PROCESSES), n_processes)
    processes = {p: rng.sample(_PROCESSES[p], rng.randint(4, 5)) for p in chosen}
    return _Company(
        tenant=tenant,
        name=name,
        domain=domain,
        leads=leads,
        facts=_company_facts(rng, name, domain, leads),
        processes=processes,
        greeting=f"{rng.choice(['Ahoy', 'Greetings', 'Hello', 'Good day'])} from {name}",
        signoff=f"The {tenant.capitalize()} {_word(rng).capitalize()} team",
        banned=rng.choice(_BANNED),
        max_words=rng.choice([60, 80, 100]),
    )


def _style_rules(company: _Company) -> list[str]:
    return [
        f"starts_with: {company.greeting}",
        f"ends_with: {company.signoff}",
        f"not_contains: {company.banned}",
        f"max_words: {company.max_words}",
    ]


def _company_documents(c: _Company) -> list[Document]:
    base = f"{c.tenant}/company"
    half = len(c.facts) // 2
    policies = "\n".join(f"- {f.statement}" for f in c.facts[:half])
    people = "\n".join(f"- {f.statement}" for f in c.facts[half:])
    procs = "\n\n".join(
        f"## {p.capitalize()}\n\n" + "\n".join(f"{i}. {s.capitalize()}." for i, s in enumerate(steps, 1))
        for p, steps in c.processes.items()
    )
    style = (
        f"# How {c.name} writes to customers\n\n"
        f'Start every reply with "{c.greeting}".\n'
        f'End every reply with "{c.signoff}".\n'
        f'Never use the word "{c.banned}".\n'
        f"Keep every reply under {c.max_words} words.\n"
    )
    reference = (
        f"# {c.name} quick reference\n\n"
        + "\n".join(f.statement for f in c.facts)
        + "\n\n"
        + "\n".join(f"For {p}: " + ", then ".join(steps) + "." for p, steps in c.processes.items())
        + f'\n\nReplies start with "{c.greeting}", end with "{c.signoff}", never say "{c.banned}" '
        f"and stay under {c.max_words} words.\n"
    )
    return [
        Document(f"{base}/policies.md", f"# {c.name} policies\n\n{policies}\n"),
        Document(f"{base}/organisation.md", f"# {c.name} organisation\n\n{people}\n"),
        Document(f"{base}/processes.md", f"# {c.name} processes\n\n{procs}\n"),
        Document(f"{base}/style-guide.md", style),
        Document(f"{base}/quick-reference.md", reference),
    ]


@dataclass
class _User:
    user: str
    team: str
    slot: str
    region: str
    budget: str
    checklist: list[str]
    signoff: str


def _user(rng: random.Random, user: str, company: _Company) -> _User:
    return _User(
        user=user,
        team=rng.choice(sorted(company.leads)),
        slot=f"{rng.choice(_DAYS)} at {rng.randint(8, 17)}:00",
        region=rng.choice(_REGIONS),
        budget=_code(rng),
        checklist=rng.sample(_USER_CHECKLISTS, 4),
        signoff=f"Cheers, {user.capitalize()}",
    )


def _user_documents(c: _Company, u: _User) -> list[Document]:
    base = f"{c.tenant}/users/{u.user}"
    notes = (
        f"# {u.user.capitalize()}'s notes\n\n"
        f"I work in the {u.team} team.\n"
        f"My preferred meeting slot is {u.slot}.\n"
        f"My customer portfolio is {u.region}.\n"
        f"My team budget code is {u.budget}.\n"
    )
    checklist = (
        f"# {u.user.capitalize()}'s start-of-day checklist\n\n"
        + "\n".join(f"{i}. {s.capitalize()}." for i, s in enumerate(u.checklist, 1))
        + f"\n\nIn short: {', then '.join(u.checklist)}.\n"
    )
    preferences = (
        f"# How I write\n\nI write my replies as bullet points, one line each, starting with '-'.\n"
        f'I sign every reply with "{u.signoff}".\n'
        f"(Team {u.team}; meeting slot {u.slot}; portfolio {u.region}; budget code {u.budget}.)\n"
    )
    return [
        Document(f"{base}/notes.md", notes),
        Document(f"{base}/checklist.md", checklist),
        Document(f"{base}/writing.md", preferences),
    ]


_CUSTOMER_ASKS = [
    "whether their order can still be refunded",
    "when the helpdesk is open",
    "how long the warranty lasts",
    "how much shipping costs",
    "where to send a support question",
    "how to return a damaged order",
    "whether a discount is possible",
    "where the head office is",
]


def generate(
    *, seed: int, tenants: int, users_per_tenant: int, per_kind: int, tenant_names: list[str] | None = None
) -> GeneratedSet:
    """Corpora and `per_kind` questions per kind per tenant (per_kind ≥ 2)."""
    if per_kind < 2:
        raise ValueError("per_kind must be at least 2 (one company and one user question per kind)")
    rng = random.Random(seed)
    names = tenant_names or ["northwind", "bluepeak", "larkspur", "quarry", "tidewater", "emberly"]
    if tenants > len(names):
        raise ValueError(f"at most {len(names)} generated tenants")
    out = GeneratedSet()
    for tenant, kind in zip(names[:tenants], rng.sample(_COMPANY_KINDS, tenants), strict=True):
        # User questions: about a fifth of each kind (at least one), split between the users.
        user_share = max(1, per_kind // 5)
        n_processes = per_kind - min(user_share, users_per_tenant)
        company = _company(rng, tenant, kind, min(n_processes, len(_PROCESSES)))
        users = [_user(rng, u, company) for u in ["ana", "ben", "chen", "dana"][:users_per_tenant]]
        out.documents += _company_documents(company)
        for u in users:
            out.documents += _user_documents(company, u)
        out.questions += _questions(rng, company, users, per_kind, user_share)
    return out


def _questions(
    rng: random.Random, c: _Company, users: list[_User], per_kind: int, user_share: int
) -> list[EvalQuestion]:
    qs: list[EvalQuestion] = []

    def add(
        kind: str, user: str | None, question: str, sources: list[str], **gold: list[str] | list[list[str]]
    ) -> None:
        n = sum(1 for q in qs if q.kind == kind) + 1
        qs.append(
            EvalQuestion.model_validate(
                {"id": f"{c.tenant}-{kind}-{n}", "tenant": c.tenant, "user": user, "kind": kind}
                | {"question": question, "sources": sources, **gold}
            )
        )

    # facts: company facts, then per user one private fact and one two-source fact
    n_user = user_share if users else 0
    n_company = per_kind - 2 * n_user if users else per_kind
    singles = c.facts[: max(1, n_company)]
    if n_company >= 2 and len(c.facts) > n_company:
        # The last company fact question asks two things at once (a multi-part question: the
        # answer must give both, or say which one the documents lack).
        singles = singles[:-1]
    for f in singles:
        add("fact", None, f.question, ["company"], answers=f.answers)
    if len(singles) < max(1, n_company):
        a, b = c.facts[len(singles)], c.facts[len(singles) + 1]
        both = f"{a.question.rstrip('?')}, and {b.question[:1].lower()}{b.question[1:]}"
        add("fact", None, both, ["company"], answers=a.answers, all_of=[a.answers, b.answers])
    for i in range(n_user):
        u = users[i % len(users)]
        private = [
            ("What is my team budget code?", [u.budget]),
            ("What is my preferred meeting slot?", [u.slot, u.slot.replace(" at ", " ")]),
            ("Which customer portfolio is mine?", [u.region, u.region.removeprefix("the ")]),
        ][i % 3]
        add("fact", u.user, private[0], ["user"], answers=private[1])
        lead = c.leads[u.team]
        add("fact", u.user, f"Who leads the team I work in at {c.name}?", ["user", "company"], answers=[lead, lead.split()[1]])  # fmt: skip
    # processes: company processes, then the users' own checklists
    procs = list(c.processes.items())
    n_user_proc = min(n_user, len(users))  # one checklist per user
    for p, steps in procs[: per_kind - n_user_proc]:
        add("process", None, f"What are the steps, in order, for {p} at {c.name}?", ["company"], steps=steps)
    for u in users[:n_user_proc]:
        add("process", u.user, "What is on my start-of-day checklist, in order?", ["user"], steps=u.checklist)
    # style: replies in the company's voice; a user's replies follow the company's and their own rules
    company_rules = _style_rules(c)
    asks = rng.sample(_CUSTOMER_ASKS, min(per_kind, len(_CUSTOMER_ASKS)))
    for i in range(per_kind):
        ask = asks[i % len(asks)]
        question = f"Write a short reply to a customer who asks {ask}."
        if i >= per_kind - n_user:
            u = users[i % len(users)]
            rules = [*company_rules[:1], f"ends_with: {u.signoff}", *company_rules[2:], "bullets"]
            add("style", u.user, question, ["company", "user"], style_rules=rules)
        else:
            add("style", None, question, ["company"], style_rules=company_rules)
    return qs
