"""negatives: queries people ask, real or phrase-book answers in the query's language, exact
counts per case and query kind, the irrelevance rule, responders; on real and demo data."""

from __future__ import annotations

import collections
import glob

import datasets
import pytest

from evals.hallucination import Keywords
from schemas import Role, ToolCall, ToolSpec, Trajectory, Turn, trajectory_id
from tests.conftest import DEMO_DATA, REPO
from tests.helpers import parse_file, rejected, run, write_spec
from transforms.base import Filtered, Stat, StepContext
from transforms.negatives import (
    LANGUAGE_SLOTS,
    NegativeMaker,
    Negatives,
    NegativesConfig,
    Query,
    call_code,
    call_details,
    capability_text,
    content_words,
    extends,
    load_answer_book,
    load_rules,
    pick_irrelevant_tools,
    select,
    source_call_trail,
    source_calls,
)
from transforms.phrasing import PhraseBook, PhrasingError
from transforms.quality.language import detect_language
from transforms.react import has_markers

WEATHER = ToolSpec(name="get_weather", description="Get the current weather of a city")
CURRENCY = ToolSpec(name="convert_currency", description="Convert an amount between currencies")
FORECAST = ToolSpec(name="weather_forecast", description="Five-day forecast")
BOOKS = ToolSpec(name="search_books", description="Search a library catalogue by title or author")
STOCK = ToolSpec(
    name="get_stock_price",
    description="Get the current stock price of a company",
    parameters={"type": "object", "properties": {"company": {"type": "string"}}, "required": ["company"]},
)
POOL = [WEATHER, CURRENCY, FORECAST, BOOKS, STOCK]


def traj(
    turns: list[Turn], tools: list[ToolSpec] | None = None, task: str | None = None, source: str = "s"
) -> Trajectory:
    return Trajectory(
        id=trajectory_id(source, str(len(turns)), turns),
        source=source,
        source_id=turns[0].text[:20],
        task=task,
        tools=tools or [],
        turns=turns,
    )


def user(text: str) -> Turn:
    return Turn(role=Role.USER, text=text)


def assistant(text: str, call: ToolCall | None = None) -> Turn:
    return Turn(role=Role.ASSISTANT, text=text, loss=True, tool_calls=[call] if call else [])


def call_turn(name: str, **arguments) -> Turn:
    return assistant("", ToolCall(name=name, arguments=arguments))


def maker(**config) -> NegativeMaker:
    config.setdefault("agent_inputs", ["a"])
    return Negatives(config, StepContext(step_id="negatives")).maker()


# --- pure helpers -------------------------------------------------------------------------------


def bash(script: str) -> ToolCall:
    return ToolCall(name="bash", arguments={"script": script})


def test_help_code_stops_before_a_command_that_uses_what_only_an_output_showed():
    find, wc = bash('find . -name "*.txt"'), bash("wc -w ./notes2.txt")
    observed = ("", "./notes2.txt\n./notes1.txt")
    asked = "How many words are in my text files?"
    assert call_code([find, wc], asked=asked, observed=observed) == ('find . -name "*.txt"', "bash")
    named = "How many words are in ./notes2.txt?"  # the user named the file: the command stays
    assert call_code([find, wc], asked=named, observed=observed) == (
        f"{find.arguments['script']}\n\n{wc.arguments['script']}",
        "bash",
    )
    assert call_code([find, wc]) == call_code([find, wc], asked=named, observed=observed)  # nothing observed
    total = [bash("du -b . | tail -1"), bash("echo 10742594 | numfmt --to=iec")]
    assert call_code(total, asked="How big is this folder?", observed=("", "10742594\t.")) == (
        "du -b . | tail -1",
        "bash",
    )
    dots = [bash("ls -la ~"), bash("ls -la ~ | grep '^d\\..*' | wc -l")]  # ".." is no learned name
    # the second command stays (".." is no learned name) and replaces the first, which it extends
    assert call_code(dots, asked="Count hidden folders", observed=("", "drwx 2 root ..")) == (
        "ls -la ~ | grep '^d\\..*' | wc -l",
        "bash",
    )


def test_help_code_hands_over_the_command_not_the_steps_that_built_it():
    steps = [bash("ls -lh ~"), bash("ls -lh ~  | sort -rh -k5"), bash("ls -lh ~ | sort -rh -k5 | head -5")]
    assert call_code(steps) == ("ls -lh ~ | sort -rh -k5 | head -5", "bash")  # white space runs count as one
    # a command another one does not extend stays, in order; so does one a later command only resembles
    setup = [bash("cd ~"), bash('find . -name "*.json"'), bash('find . -name "*.json" | wc -l'), bash("ls -la")]
    assert call_code(setup) == ('cd ~\n\nfind . -name "*.json" | wc -l\n\nls -la', "bash")
    assert extends("ls -lh ~ | head", "ls -lh ~") and extends("SELECT a FROM t WHERE b = 1", "SELECT a FROM t")
    assert not extends("ls -la", "ls -l") and not extends("ls -l", "ls -l") and not extends("cat x", "ls")
    queries = [ToolCall(name="sql", arguments={"query": q}) for q in ("SELECT * FROM t", "SELECT * FROM t LIMIT 3")]
    assert call_code(queries) == ("SELECT * FROM t LIMIT 3", "sql")


def test_help_code_leaves_out_a_call_the_environment_answered_with_an_error():
    wrong = ToolCall(name="sql", arguments={"query": "SELECT `Employee` `ID` FROM t"})
    right = ToolCall(name="sql", arguments={"query": "SELECT `Employee ID` FROM t"})
    error = "1064 (42000): You have an error in your SQL syntax; check the manual near 'ID'"
    turns = [
        user("Which employee ids are there?"),
        call_turn("sql", query=wrong.arguments["query"]),
        Turn(role=Role.USER, text=error),
        call_turn("sql", query=right.arguments["query"]),
        Turn(role=Role.USER, text="[(101,), (102,)]"),
    ]
    assert [made.reply for made in source_call_trail(traj(turns), 0)] == [error, "[(101,), (102,)]"]
    rules = load_rules(None, ".")
    failed = tuple(rules.is_error(made.reply) for made in source_call_trail(traj(turns), 0))
    assert failed == (True, False)
    assert call_code([wrong, right], failed=failed) == ("SELECT `Employee ID` FROM t", "sql")
    assert call_code([wrong], failed=(True,)) is None  # nothing that ran: no code to hand over
    assert not rules.is_error("grep found 3 lines mentioning error handling")
    assert rules.is_error("bash: ifconfig: command not found")


def test_what_each_call_was_shown_is_the_non_assistant_text_before_it():
    turns = [
        user("Count the words in my text files."),
        call_turn("bash", script="find . -name '*.txt'"),
        Turn(role=Role.USER, text="./a.txt"),
        assistant("Two steps more.", bash("wc -w ./a.txt")),
        Turn(role=Role.TOOL, text="12 ./a.txt"),
        call_turn("bash", script="echo done"),
    ]
    assert len(source_calls(traj(turns), 0)) == 3
    assert [made.seen for made in source_call_trail(traj(turns), 0)] == ["", "./a.txt", "./a.txt\n12 ./a.txt"]


def test_content_words_split_identifiers_and_drop_stop_words():
    assert content_words("getWeatherForecast for the cities") == {"weather", "forecast", "citie"}
    assert "with" not in content_words("with")


def test_irrelevant_tools_never_reuse_source_names_or_share_words():
    pool = [WEATHER, CURRENCY, FORECAST, BOOKS]
    picked = pick_irrelevant_tools("What is the weather in Oslo?", [WEATHER], pool, 5, 0, "neg", "k")
    names = {t.name for t in picked}
    assert "get_weather" not in names and "weather_forecast" not in names  # name, then shared word 'weather'
    assert names == {"convert_currency", "search_books"}
    assert picked == pick_irrelevant_tools("What is the weather in Oslo?", [WEATHER], pool, 5, 0, "neg", "k")
    assert len(pick_irrelevant_tools("What is the weather in Oslo?", [WEATHER], pool, 1, 0, "neg", "k")) == 1
    # the needed capability's words (e.g. a parser-made 'sql' call's related words) ban tools too
    catalogue = ToolSpec(name="lookup_record", description="Find a record in the catalogue table")
    kept = pick_irrelevant_tools("How many rows?", [], [catalogue, BOOKS], 5, 0, "neg", "k", banned_words={"table"})
    assert [t.name for t in kept] == ["search_books"]


def test_irrelevant_tools_described_in_the_query_language_come_first():
    # a Chinese description shares no word with an English query by construction; without the
    # language preference the word check would favour such tools (the function_calling recipe
    # showed 46 of 77 English irrelevant-tools prompts with Chinese tool descriptions)
    chinese = [ToolSpec(name=f"zh_tool_{i}", description=f"根据关键词搜索第{i}类图像并返回结果列表") for i in range(6)]
    english = [CURRENCY, BOOKS]
    query = "What is the weather in Oslo tomorrow?"
    picked = pick_irrelevant_tools(query, [WEATHER], chinese + english, 2, 0, "neg", "k")
    assert {t.name for t in picked} == {"convert_currency", "search_books"}
    # more tools than the query's language has: the others fill up, in keyed-hash order
    assert len(pick_irrelevant_tools(query, [WEATHER], chinese + english, 3, 0, "neg", "k")) == 3
    chinese_query = pick_irrelevant_tools("明天奥斯陆的天气怎么样？", [], chinese + english, 2, 0, "neg", "k")
    assert all(t.name.startswith("zh_tool") for t in chinese_query)
    # off: the keyed-hash order alone; on: the same order, the query's language first
    off = pick_irrelevant_tools(query, [WEATHER], chinese + english, 8, 0, "neg", "k", same_language=False)
    on = pick_irrelevant_tools(query, [WEATHER], chinese + english, 8, 0, "neg", "k")
    assert sorted(t.name for t in off) == sorted(t.name for t in on) and len(on) == 8
    assert [t.name for t in on] == [t.name for t in off if t in english] + [t.name for t in off if t in chinese]


def test_quotas_split_count_exactly_by_case_and_query_kind():
    config = NegativesConfig(agent_inputs=["a"])
    assert config.quotas() == {"irrelevant_tools": 381, "no_tools": 380}  # the paper: half and half
    cells = config.cell_quotas()
    assert cells == {
        ("no_tools", "needs_tool"): 190,
        ("no_tools", "normal"): 190,
        ("irrelevant_tools", "needs_tool"): 191,
        ("irrelevant_tools", "normal"): 190,
    }
    three = NegativesConfig(
        agent_inputs=["a"],
        general_inputs=["g"],
        shares={"no_tools": 0.4, "irrelevant_tools": 0.4, "general_with_tools": 0.2},
        needs_tool_share=1.0,
    )
    assert sum(three.cell_quotas().values()) == 761
    assert three.cell_quotas()[("general_with_tools", "normal")] == 152
    assert three.cell_quotas()[("no_tools", "normal")] == 0
    with pytest.raises(ValueError, match="sum to 1"):
        NegativesConfig(agent_inputs=["a"], shares={"no_tools": 0.7})
    with pytest.raises(ValueError, match="general_inputs"):
        NegativesConfig(agent_inputs=["a"], shares={"no_tools": 0.5, "general_with_tools": 0.5})
    with pytest.raises(ValueError, match="model"):
        NegativesConfig(agent_inputs=["a"], responder="model")
    with pytest.raises(ValueError):
        NegativesConfig(agent_inputs=["a"], needs_tool_share=1.5)
    with pytest.raises(ValueError):
        NegativesConfig(agent_inputs=["a"], unknown=1)


# --- which queries, and their kind --------------------------------------------------------------


def test_environment_observations_are_never_queries():
    reader = maker().reader
    room = traj([user("You are in the middle of a room. Looking quickly around you, you see a bed 1."),
                 assistant("THOUGHT: go.\nACTION: go to bed 1")])  # fmt: skip
    shop = traj([user("WebShop [SEP] Instruction: [SEP] blue shirt [SEP] Search"), assistant("Action: search[shirt]")])
    page = traj([user("'''<html> <div> </div> </html>'''\nBased on the HTML webpage above, try ..."),
                 assistant("Answer: A.")])  # fmt: skip
    assert reader.examine("agent", room) == "environment_observation"
    assert reader.examine("agent", shop) == "environment_observation"
    assert reader.examine("agent", page) == "environment_observation"
    tagged = traj([user("Put a mug in the sink."), assistant("ACTION: go to sink 1")], task="alfworld")
    assert reader.examine("agent", tagged) == "excluded_task"
    # AgentGym's worlds, whatever their task name (not in exclude_tasks): recognised by their text
    grid = traj([user("Your goal: go to the red ball\nIn front of you in this room, you can see a red ball 1."),
                 assistant("Action: go to red ball 1")], task="babyai")  # fmt: skip
    craft = traj([user("Crafting commands:\ncraft 1 stick using 2 planks\nGoal: craft stick."),
                  assistant("Action: get 2 planks")])  # fmt: skip
    maze = traj([user("The goal is at position 8, 6. Your current position is at position 1, 1."),
                 assistant("Action: move up")])  # fmt: skip
    for observation in (grid, craft, maze):
        assert reader.examine("agent", observation) == "environment_observation"


def test_tool_descriptions_become_verb_phrases_or_nothing():
    """The capability of a needs-tool answer is a verb phrase ("I can't <capability>"): a
    third-person verb in its base form, the tool's self-reference and parameter docs cut."""
    assert (
        capability_text("Retrieves the capital of a district in Ghana.")
        == "retrieve the capital of a district in Ghana"
    )
    assert capability_text("This endpoint fetches all quotes. You can page.") == "fetch all quotes"
    assert capability_text("Searches for books by title") == "search for books by title"
    assert capability_text("Queries the database") == "query the database"
    assert capability_text("Fetch a user by id.\n\n    Args:\n      is_id (str): The id.") == "fetch a user by id"
    assert capability_text("Get the current stock price of a company") == "get the current stock price of a company"
    assert capability_text("Weather forecast for a city") == ""  # no verb: the phrase book's own words
    assert capability_text("获取公司当前的股票价格") == "获取公司当前的股票价格"
    fn = maker()
    tool = ToolSpec(name="get_capital", description="Retrieves the capital of a district in Ghana given its name.")
    asked = user("What is the capital of the Kumasi district?")
    trajectory = traj([asked, call_turn("get_capital", district="Kumasi")], tools=[tool])
    answer = fn.build("no_tools", trajectory, POOL).messages[-1].content
    assert "retrieve the capital of a district in Ghana" in answer and "retrieves" not in answer


def test_a_reply_that_only_gathers_a_calls_details_makes_a_needs_tool_query():
    reader = maker().reader
    email = ToolSpec(name="send_email", description="Send an email to a recipient")
    loan = ToolSpec(name="calculate_loan_payment", description="Calculate a monthly loan payment")
    gather = assistant("Sure, I can help. Please provide the recipient's address, the subject and the message.")
    details = user("boss@example.com, subject Update, the project is on track.")
    sent = call_turn("send_email", recipient="boss@example.com", subject="Update")
    asked = user("I need to send an email to my boss.")
    found = reader.examine("agent", traj([asked, gather, details, sent], tools=[email]))
    assert isinstance(found, Query) and found.kind == "needs_tool" and found.calls[0].name == "send_email"
    assert reader.rules.answerable("translate_text")  # a model translates a sentence itself
    # the assistant can work a loan payment out itself: asking for the figures is a real answer
    ask_figures = assistant("Of course. Could you tell me the amount, the rate and the term?")
    computed = call_turn("calculate_loan_payment", amount=5000, rate=5, term=12)
    loan_query = traj([user("Help me with my loan payment."), ask_figures, details, computed], tools=[loan])
    assert reader.examine("agent", loan_query) == "asks_back"
    # an answer that asks nothing, then a new request with a call: the first query stays normal
    answered = assistant("An abstract data type is defined by its operations, not its implementation.")
    later = traj([user("What is an abstract data type?"), answered, asked, sent], tools=[email])
    found = reader.examine("agent", later)
    assert isinstance(found, Query) and found.kind == "normal"


def test_requests_are_read_out_of_task_turns():
    reader = maker().reader
    kg = traj(
        [
            user("A new question: dave eiland coached which baseball teams?\nEntities: [Dave Eiland]"),
            assistant("Thought: find relations.\nAction: get_relations(Dave Eiland)"),
        ],
        task="kg",
    )
    # a knowledge question is answerable: never refused by a template; the model responder answers it
    assert reader.examine("agent", kg) == "answerable_without_answer"
    found = maker(responder="model", model="unused").reader.examine("agent", kg)
    assert isinstance(found, Query) and found.kind == "normal" and found.answer is None
    assert found.text == "dave eiland coached which baseball teams?"
    os_task = traj(
        [
            user("Now, I will start a new problem in a new OS. My problem is:\n\nCount the files in /etc."),
            assistant("Think: list them.\n\nAct: bash\n\n```bash\nls /etc | wc -l\n```"),
        ],
        task="os",
    )
    assert reader.examine("agent", os_task).text == "Count the files in /etc."


def test_normal_queries_keep_real_answers_and_bad_ones_are_filtered():
    reader = maker().reader
    plain = traj([user("Write a definition of photoshop."), assistant("Photoshop is an image editor by Adobe.")])
    found = reader.examine("agent", plain)
    assert found.kind == "normal" and found.answer == "Photoshop is an image editor by Adobe."
    decline = traj(
        [user("Can you order a pizza?"), assistant("I'm sorry, but I can't do that. My current capabilities are...")],
        tools=[WEATHER],
    )
    assert reader.examine("agent", decline) == "declines_request"
    asks = traj([user("I need a password."), assistant("Sure, how long should it be?")])
    assert reader.examine("agent", asks) == "asks_back"
    mixed = traj(
        [
            user("Ruby代码实现冒泡排序算法的代码是什么？请提供逐步解释。"),
            assistant("Sure, here is an implementation of the bubble sort algorithm in Ruby with an explanation."),
        ]
    )
    assert reader.examine("agent", mixed) == "answer_language_mismatch"
    # glaive's flattened code: a real answer, but code that does not run
    flat = traj(
        [
            user("Write a Python function for the factorial."),
            assistant(
                "Here it is:\n```python\ndef factorial(n):\n if n == 0:\n return 1\n return n * factorial(n-1)\n```"
            ),
        ]
    )
    assert reader.examine("agent", flat) == "collapsed_code_in_answer"
    indented = flat.model_copy(deep=True)
    indented.turns[-1].text = indented.turns[-1].text.replace("\n return 1", "\n     return 1")
    assert reader.examine("agent", indented).kind == "normal"


def test_answerable_questions_are_answered_not_refused():
    """A call to a tool that only computes (calculate_*) makes a normal query, answered with the
    source's own answer after the tool's result, never with a refusal."""
    turns = [
        user("What is the area of a 5 by 3 rectangle?"),
        call_turn("calculate_area", shape="rectangle", length=5, width=3),
        Turn(role=Role.TOOL, text='{"area": 15}'),
        assistant("The area of the rectangle is 15 square units."),
    ]
    found = maker().reader.examine("agent", traj(turns, tools=[ToolSpec(name="calculate_area")]))
    assert found.kind == "normal" and found.answer == "The area of the rectangle is 15 square units."
    joke = [
        user("I'm a bit down. Can you tell me a joke?"),
        call_turn("get_random_joke"),
        Turn(role=Role.TOOL, text='{"joke": "Why do scientists not trust atoms? They make up everything."}'),
        assistant("Here is one: why do scientists not trust atoms? Because they make up everything!"),
    ]
    found = maker().reader.examine("agent", traj(joke, tools=[ToolSpec(name="get_random_joke")]))
    assert found.kind == "normal" and found.answer.startswith("Here is one")  # a joke needs no tool


def test_needs_tool_answers_say_what_is_missing_in_the_query_language():
    fn = maker()
    en = traj([user("What's the current stock price of Apple?"),
               call_turn("get_stock_price", company="Apple", exchange="NASDAQ")], tools=[STOCK])  # fmt: skip
    zh_tool = ToolSpec(name="get_stock_price", description="获取公司当前的股票价格")
    zh = traj([user("你能告诉我苹果公司现在的股价吗？"), call_turn("get_stock_price", company="苹果")], tools=[zh_tool])
    for trajectory, language in ((en, "en"), (zh, "zh")):
        for case in ("no_tools", "irrelevant_tools"):
            sample = fn.build(case, trajectory, POOL)
            answer = sample.messages[-1].content
            assert detect_language(answer) == language, answer
            assert sample.metadata["language"] == language and sample.metadata["query"] == "needs_tool"
            assert not has_markers(answer)
            assert not any(p.lower() in answer.lower() for p in Keywords().general_phrases)
            if language == "en":
                assert "stock price" in answer and "Apple" in answer  # the capability and the details
                assert "NASDAQ" not in answer  # an argument the agent chose, the user never said
            else:
                assert "股票价格" in answer and "苹果" in answer
            if case == "irrelevant_tools":
                assert sample.tools and all(t.name in answer for t in sample.tools)
                assert "get_stock_price" not in {t.name for t in sample.tools}
            else:
                assert sample.tools == [] and sample.messages[0].role is Role.USER


def test_native_style_declares_irrelevant_tools_without_describing_them():
    """function_calling's positives declare tools in ``tools`` only (a chat template renders
    them); negatives that also described them in a system message would teach that tools
    described in words are never called."""
    trajectory = traj([user("What's the current stock price of Apple?"), call_turn("get_stock_price", company="Apple")],
                      tools=[STOCK])  # fmt: skip
    described = maker().build("irrelevant_tools", trajectory, POOL)
    native = maker(style="native").build("irrelevant_tools", trajectory, POOL)
    assert described.messages[0].role is Role.SYSTEM and all(
        t.name in described.messages[0].content for t in described.tools
    )
    assert native.tools == described.tools and [m.role for m in native.messages] == [Role.USER, Role.ASSISTANT]
    assert native.messages[1:] == described.messages[2:]  # the same answer


def test_a_knowledge_lookup_is_neither_refused_nor_answered_with_the_tools_results():
    """glaive's search_books / get_movie_details queries: a refusal would teach refusing what the
    model can answer, and the source's answer reports the tool's (sometimes invented) results."""
    lookup = traj(
        [
            user("I am looking for a mystery book by Agatha Christie."),
            call_turn("search_books", author="Agatha Christie", genre="mystery"),
            Turn(role=Role.TOOL, text='{"results": [{"title": "And Then There Were None"}]}'),
            assistant("I found a mystery book by Agatha Christie: And Then There Were None."),
        ],
        tools=[BOOKS],
    )
    assert maker().reader.examine("agent", lookup) == "knowledge_lookup"
    found = maker(responder="model", model="unused").reader.examine("agent", lookup)
    assert isinstance(found, Query) and found.kind == "normal" and found.answer is None
    # a tool that reads live data still makes a needs-tool query
    stock = traj([user("What's the current stock price of Apple?"), call_turn("get_stock_price", company="Apple")],
                 tools=[STOCK])  # fmt: skip
    assert maker().reader.examine("agent", stock).kind == "needs_tool"


def test_code_that_cannot_run_as_written_is_not_handed_over_as_help():
    """DB-Bench queries that qualify a column inside one pair of backticks fail in MySQL."""
    sql = ToolCall(name="sql", arguments={"query": "SELECT COUNT(*) FROM `posts` WHERE `posts.Score` > 10"})
    broken = traj([user("How many posts score above 10?"), assistant("", sql)], task="db")
    assert maker().reader.examine("agent", broken) == "broken_code_in_help"
    fixed = sql.model_copy(update={"arguments": {"query": "SELECT COUNT(*) FROM `posts` WHERE `posts`.`Score` > 10"}})
    assert (
        maker()
        .reader.examine("agent", traj([user("How many posts score above 10?"), assistant("", fixed)], task="db"))
        .kind
        == "needs_tool"
    )


def test_a_protocol_tool_is_never_drawn_as_an_irrelevant_tool():
    """ToolBench's Finish ("ALWAYS call this function at the end of your attempt") declared in a
    negative would contradict the agent data that must end with a call to it."""
    finish = ToolSpec(
        name="Finish",
        description="If you believe that you have obtained a result that can answer the task, call this function.",
        parameters={"type": "object", "properties": {"final_answer": {"type": "string"}}},
    )
    trajectory = traj([user("What's the current stock price of Apple?"), call_turn("get_stock_price", company="Apple")],
                      tools=[STOCK])  # fmt: skip
    pool = [finish, BOOKS]
    assert [t.name for t in maker(tools_per_sample=2).build("irrelevant_tools", trajectory, pool).tools] == [
        "search_books"
    ]
    assert maker().reader.rules.protocol("Finish") and not maker().reader.rules.protocol("finish_order")


def test_details_name_arguments_in_words_not_identifiers():
    call = ToolCall(name="find_movies", arguments={"release_year": 2019, "trackingNumber": "YT20", "genre": "comedy"})
    assert call_details(call) == [
        {"name": "release year", "value": "2019"},
        {"name": "tracking number", "value": "YT20"},
        {"name": "genre", "value": "comedy"},
    ]
    movies = ToolSpec(name="find_movies", description="Search for movies by genre and release year")
    fn = maker()
    trajectory = traj(
        [user("Can you find comedy movies from 2019?"), call_turn("find_movies", genre="comedy", release_year=2019)],
        tools=[movies],
    )
    answers = [fn.build(case, trajectory, POOL).messages[-1].content for case in ("no_tools", "irrelevant_tools")]
    assert all("release year" in a and "release_year" not in a for a in answers), answers


def test_code_the_source_ran_is_offered_as_help():
    db = traj(
        [
            user("How many French drivers are there?\nThe name of this table is drivers, and the headers are id,nat."),
            assistant(
                "Count them.\nAction: Operation\n```sql\nSELECT COUNT(*) FROM drivers WHERE nat = 'French';\n```"
            ),
        ],
        task="db",
    )
    answer = maker().build("no_tools", db, POOL).messages[-1].content
    assert "SELECT COUNT(*) FROM drivers WHERE nat = 'French';" in answer and "```sql" in answer
    assert "SQL" in answer


def test_dataset_responder_uses_the_source_decline():
    decline = traj(
        [user("Can you order a pizza for me?"), assistant("I'm sorry, but I'm unable to order a pizza for you.")],
        tools=[WEATHER],
    )
    fn = maker(responder="dataset")
    found = fn.reader.examine("agent", decline)
    assert found.kind == "needs_tool" and found.answer.startswith("I'm sorry")
    assert fn.build("no_tools", decline, POOL).messages[-1].content == found.answer
    assert fn.build("no_tools", decline, POOL).metadata["responder"] == "dataset"


def test_dataset_responder_uses_the_users_answers(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        '{"query": "What\'s the current   stock price of Apple?", "answer": "I have no market data here; '
        'a finance site shows the live price of AAPL, and I can help you read it."}\n'
        '{"query": "你能告诉我苹果公司现在的股价吗？", "answer": "I cannot check prices."}\n'
    )
    fn = maker(responder="dataset", answers=str(answers))
    en = traj([user("What's the current stock price of Apple?"), call_turn("get_stock_price", company="Apple")],
              tools=[STOCK])  # fmt: skip
    found = fn.reader.examine("agent", en)
    assert found.kind == "needs_tool" and found.answer.startswith("I have no market data")  # matched, spacing aside
    assert fn.build("irrelevant_tools", en, POOL).messages[-1].content == found.answer
    zh = traj([user("你能告诉我苹果公司现在的股价吗？"), call_turn("get_stock_price", company="苹果")], tools=[STOCK])
    assert fn.reader.examine("agent", zh) == "answer_language_mismatch"  # an English answer to a Chinese query
    other = traj([user("What's the weather in Oslo?"), call_turn("get_weather", city="Oslo")], tools=[WEATHER])
    assert fn.reader.examine("agent", other) == "no_supplied_answer"
    with pytest.raises(ValueError, match="dataset"):
        NegativesConfig(agent_inputs=["a"], answers=str(answers))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "answer": "a"}\n{"query": "q", "answer": "b"}\n')
    with pytest.raises(PhrasingError, match="second time"):
        maker(responder="dataset", answers=str(bad))


def test_select_fills_each_cell_exactly_and_general_conversations_come_from_general_inputs():
    agent = [traj([user(f"Stock price of company {i}?"), call_turn("get_stock_price", company=f"C{i}")], [STOCK])
             for i in range(6)]  # fmt: skip
    plain = [traj([user(f"Tell me a fact about number {i}."), assistant(f"Number {i} is an integer.")])
             for i in range(3)]  # fmt: skip
    general = [traj([user(f"Explain topic {i} briefly."), assistant(f"Topic {i} is simple.")], source="g")
               for i in range(4)]  # fmt: skip
    fn = maker(
        general_inputs=["g"],
        count=10,
        shares={"no_tools": 0.4, "irrelevant_tools": 0.4, "general_with_tools": 0.2},
        needs_tool_share=0.5,
    )
    records = [("agent", t) for t in agent + plain] + [("general", t) for t in general]
    selection = select(records, fn.reader, 0, "negatives")
    counts = collections.Counter(selection.values())
    assert counts == {
        "no_tools:needs_tool": 2,
        "no_tools:normal": 2,
        "irrelevant_tools:needs_tool": 2,
        "irrelevant_tools:normal": 2,
        "general_with_tools:normal": 2,
    }
    assert all(key.startswith("general:") for key, cell in selection.items() if cell.startswith("general_with"))
    assert selection == select(records, fn.reader, 0, "negatives")  # deterministic


def test_user_phrase_books_and_rules(tmp_path):
    slots = {
        "capability": "eine Suche",
        "help_code": "Code: {{ code }}",
        "help_details": "{{ details | length }} Angaben",
        "help_general": "Ich helfe gern anders.",
        "no_tools": "Dafür fehlt mir {{ capability }}. {{ help }}",
        "irrelevant_tools": "Meine Werkzeuge ({{ tool_names }}) passen nicht. {{ help }}",
    }
    book = tmp_path / "de.yaml"
    book.write_text("".join(f"de.{slot}: [{value!r}]\n" for slot, value in slots.items()))
    fn = maker(templates=str(book))
    assert "de" in fn.reader.languages and "en" in fn.reader.languages
    incomplete = tmp_path / "fr.yaml"
    incomplete.write_text("fr.no_tools: ['Non.']\n")
    with pytest.raises(PhrasingError, match="lack slots"):
        maker(templates=str(incomplete))
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("en.help_general: ['{{ capability.__class__.__mro__ }}']\n")
    with pytest.raises(PhrasingError):
        maker(templates=str(unsafe))
    rules = tmp_path / "rules.yaml"
    rules.write_text("observation_patterns: ['^Room:']\n")
    reader = maker(query_rules=str(rules)).reader
    assert reader.examine("agent", traj([user("Room: a bed."), call_turn("look")])) == "environment_observation"
    bad = tmp_path / "bad.yaml"
    bad.write_text("query_patterns: ['(no group)']\n")
    with pytest.raises(PhrasingError, match="named group 'query'"):
        maker(query_rules=str(bad))


# --- real data ----------------------------------------------------------------------------------


def real_records(external) -> list[tuple[str, Trajectory]]:
    records = []
    for path in sorted(glob.glob(str(external("llamafactory_glaive_toolcall") / "*.json"))):
        records += [("agent", t) for t in parse_file(path, "sharegpt")[0]]
    for path in sorted(glob.glob(str(external("toolbench_openbmb", "data_example", "answer") / "*" / "*.json"))):
        records += [
            ("agent", t)
            for t in parse_file(
                path,
                "openai",
                messages_field="answer_generation.train_messages.-1",
                tools_field="answer_generation.function",
            )[0]
        ]
    for path in sorted(glob.glob(str(external("agentinstruct_thudm") / "*.parquet"))):
        records += [("agent", t) for t in parse_file(path, "agentinstruct")[0]]
    general = external("arena_hard_auto", "data", "arena-hard-v0.1", "model_answer", "gpt-4-0314.jsonl")
    records += [("general", t) for t in parse_file(general, "openai")[0]]
    return records


@pytest.mark.real_data
def test_real_negatives_are_recognisable_varied_and_in_the_query_language(external):
    """The issue's targets on the real data: no environment observations; the most common answer
    <= 2 %, distinct answers >= 90 %, answer language = query language; half and half."""
    records = real_records(external)
    fn = maker(general_inputs=["g"])
    selection = select(records, fn.reader, 0, "negatives")
    pool = sorted({t.name: t for _, traj_ in records for t in traj_.tools}.values(), key=lambda t: t.name)
    samples = []
    for group, trajectory in records:
        outs = [o for o in fn((group, trajectory), selection=selection, pool=[t.model_dump() for t in pool])]
        samples += [o for o in outs if not isinstance(o, Stat | Filtered)]
    assert len(samples) == 761
    cases = collections.Counter(s.metadata["case"] for s in samples)
    assert cases == {"no_tools": 380, "irrelevant_tools": 381}
    assert collections.Counter(s.metadata["query"] for s in samples) == {"needs_tool": 381, "normal": 380}
    assert not {s.lineage.task for s in samples} & {"alfworld", "webshop", "mind2web"}
    answers = collections.Counter(s.messages[-1].content for s in samples)
    assert answers.most_common(1)[0][1] / len(samples) <= 0.02
    assert len(answers) / len(samples) >= 0.90
    for sample in samples:
        query, answer = sample.messages[-2].content, sample.messages[-1].content
        assert "[SEP]" not in query and "<html" not in query
        q, a = detect_language(query), detect_language(answer)
        assert q is None or a is None or q == a, (query[:80], answer[:80])
        assert not has_markers(answer)
        if sample.metadata["query"] == "normal":
            assert sample.metadata["responder"] == "source"  # a real answer, never a refusal template
    languages = collections.Counter(s.metadata["language"] for s in samples if s.metadata["query"] == "needs_tool")
    assert languages["zh"] > 0 and languages["en"] > 0
    sources = collections.Counter(s.lineage.source for s in samples)
    assert set(sources) >= {"sharegpt", "agentinstruct", "openai"}  # parse_file names sources by format


# --- the step in a pipeline ---------------------------------------------------------------------


def test_the_draw_keeps_each_labels_smallest_keys_whatever_the_bundles_and_merge_order():
    import heapq
    import random

    from transforms.beam.negatives import SmallestPerLabel

    rng = random.Random(7)
    limits = {"needs_tool": 5, "normal:agent": 3, "normal:general": 200}
    pairs = [(rng.choice(sorted(limits)), ((rng.randrange(10**6), f"k{i}"), f"k{i}")) for i in range(3000)]
    expected = {
        label: heapq.nsmallest(limit, [r for lab, r in pairs if lab == label]) for label, limit in limits.items()
    }
    fn = SmallestPerLabel(limits)
    for bundles in (1, 7, 40):
        accumulators = []
        for b in range(bundles):
            accumulator = fn.create_accumulator()
            for pair in pairs[b::bundles]:
                accumulator = fn.add_input(accumulator, pair)
            accumulators.append(fn.compact(accumulator))
        rng.shuffle(accumulators)
        merged = fn.merge_accumulators([*accumulators[:3], fn.merge_accumulators(accumulators[3:])])
        assert fn.extract_output(merged) == expected and list(fn.extract_output(merged)) == sorted(limits)
    assert fn.extract_output(fn.create_accumulator()) == {}


def test_not_selected_and_ineligible_inputs_are_filtered_with_reasons():
    trajs = parse_file(DEMO_DATA / "agentinstruct_sample.jsonl", "agentinstruct")[0]
    fn = maker()
    outcomes = [o for t in trajs for o in fn(("agent", t), selection={}, pool=[]) if not isinstance(o, Stat)]
    assert all(isinstance(o, Filtered) for o in outcomes) and len(outcomes) == len(trajs)
    allowed = {"not_selected", "excluded_task", "no_tool_call", "react_markers_in_answer", "answerable_without_answer"}
    assert {o.reason for o in outcomes} <= allowed


def test_demo_pipeline_emits_every_case_exactly(tmp_path):
    summary = run(REPO / "pipelines" / "demo.yaml", tmp_path / "out")
    ratios = summary.manifest.ratios["negatives"]
    assert ratios["achieved"] == ratios["target"] == {"general_with_tools": 2, "irrelevant_tools": 2, "no_tools": 2}
    rows = [r for r in datasets.load_from_disk(str(tmp_path / "out")) if r["kind"] == "negative"]
    assert (
        sorted(r["lineage"]["derivation"] for r in rows)
        == ["negative:general_with_tools"] * 2 + ["negative:irrelevant_tools"] * 2 + ["negative:no_tools"] * 2
    )
    assert all(m["capability"] == "general" for r in rows for m in r["messages"] if m["role"] == "assistant")
    dropped = rejected(tmp_path / "out", "negatives")
    assert dropped and all(d["record_id"] for d in dropped)
    # Ineligible trajectories keep their JSON for inspection; quota losers are accounted by id only.
    assert all(d["payload"].startswith("{") for d in dropped if d["reason"] != "not_selected")
    assert all(d["payload"] == "" for d in dropped if d["reason"] == "not_selected")
    assert {d["reason"] for d in dropped} >= {"not_selected", "excluded_task"}


def test_input_names_are_checked_before_running(tmp_path):
    from pipelines.errors import SpecError
    from pipelines.graph import load_plan

    steps = [
        {
            "id": "a",
            "type": "read",
            "config": {"format": "agentinstruct", "paths": str(DEMO_DATA / "agentinstruct_sample.jsonl")},
        },
        {"id": "neg", "type": "negatives", "inputs": ["a"], "config": {"agent_inputs": ["b"]}},
        {"id": "write", "type": "write", "inputs": ["neg"]},
    ]
    with pytest.raises(SpecError, match="not inputs of this step") as info:
        load_plan(str(write_spec(tmp_path, steps)))
    assert info.value.step_id == "neg"


@pytest.mark.slow
def test_model_responder_runs_a_local_model_through_run_inference(tmp_path):
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    steps = [
        {
            "id": "agent",
            "type": "read",
            "config": {"format": "sharegpt", "paths": str(DEMO_DATA / "glaive_sample.json")},
        },
        {
            "id": "more",
            "type": "read",
            "config": {"format": "openai", "paths": str(DEMO_DATA / "toolbench_sample.jsonl")},
        },
        {
            "id": "neg",
            "type": "negatives",
            "inputs": ["agent", "more"],
            "config": {
                "agent_inputs": ["agent", "more"],
                "count": 2,
                "needs_tool_share": 1.0,
                "responder": "model",
                "model": str(model),
                "max_new_tokens": 8,
            },
        },
        {"id": "write", "type": "write", "inputs": ["neg"]},
    ]
    spec = write_spec(tmp_path, steps)
    first = run(spec, tmp_path / "out")
    assert first.manifest.ratios["neg"]["achieved"] == {"irrelevant_tools": 1, "no_tools": 1}
    assert not first.manifest.steps["neg"].dead_letter
    rows = list(datasets.load_from_disk(str(tmp_path / "out")))
    assert len(rows) == 2 and all(r["messages"][-1]["content"] for r in rows)  # generated text filled in
    assert all(r["metadata"] and '"responder":"model"' in r["metadata"] for r in rows)
    second = run(spec, tmp_path / "again")
    assert [s.sha256 for s in first.manifest.output.shards] == [s.sha256 for s in second.manifest.output.shards]


def test_builtin_wording_keeps_its_language_and_its_word():
    """Every variant of the built-in book, rendered: Chinese help gives the request's values
    without the English argument names ("origin：纽约"), and no irrelevant-tools answer says it
    will answer when what follows is only help ("so I'll answer without them")."""
    book = PhraseBook(load_answer_book(None, "."))
    details = {**LANGUAGE_SLOTS["help_details"], "details": [{"name": "origin", "value": "纽约"}]}
    chinese = [book._render("zh.help_details", i, v, details) for i, v in enumerate(book._compiled["zh.help_details"])]
    assert chinese and all("纽约" in text and "origin" not in text for text in chinese)
    irrelevant = {**LANGUAGE_SLOTS["irrelevant_tools"], "help": "HELP"}
    for language in ("en", "zh"):
        slot = f"{language}.irrelevant_tools"
        for index, variant in enumerate(book._compiled[slot]):
            text = book._render(slot, index, variant, irrelevant)
            assert "answer without" not in text and "直接回答" not in text, text
